//! The per-port picture at one moment: a plain, serialisable data structure.
//! The aggregator produces it; `watch`, the daemon's reports and `/metrics`
//! only render it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::findings::Finding;
use crate::tcp::TcpState;

/// Which side of a connection the port is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The port is local and listens: accepted connections (passive opens).
    In,
    /// The port is the remote one we connect to (active opens).
    Out,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot (RFC 3339).
    pub time: String,
    /// Seconds since tracing started.
    pub uptime_s: f64,
    pub events: EventCounts,
    /// Live sockets followed by the tracker.
    pub sockets_tracked: u64,
    /// One entry per (port, direction), sorted; the "other" row (port `None`),
    /// if any, comes last.
    pub ports: Vec<PortSnapshot>,
    /// What the numbers mean (`findings::evaluate`), most severe first.
    #[serde(default)]
    pub findings: Vec<Finding>,
}

/// Everything counted about the event stream itself. `lost` and `untracked`
/// are part of every snapshot so that no view can hide them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    pub total: u64,
    /// By event kind name (`state`, `synack_retrans`, ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Events lost: the ring buffer was full, or the kernel skipped the
    /// program and nothing caught the event.
    pub lost: u64,
    /// Of `lost`, program runs the kernel skipped (its recursion guard) and
    /// the catcher did not handle: no setting helps those. 0 in snapshots
    /// replayed from recordings, which keep only the total.
    #[serde(default)]
    pub lost_skipped: u64,
    /// Records that did not decode.
    pub undecodable: u64,
    /// New sockets not tracked because the tracking table was full.
    pub untracked: u64,
    /// Distinct (port, direction) keys folded into the "other" row.
    pub folded_ports: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortSnapshot {
    /// `None` for the "other" row that folds ports beyond the cap.
    pub port: Option<u16>,
    pub direction: Direction,
    /// A socket listens on this port now.
    pub listening: bool,
    /// Of the listener(s), from sock_diag: connections waiting for accept()
    /// and the backlog limit.
    pub accept_queue: Option<AcceptQueue>,
    /// State transitions attributed to this port.
    pub transitions: u64,
    /// Per state; only states with something to say are present.
    pub states: BTreeMap<TcpState, StateSnapshot>,
    pub synack_retrans: u64,
    pub handshakes: Handshakes,
    /// Resets sent, by kernel reason and the state before the reset; most first.
    pub resets_sent: Vec<ResetCount>,
    /// Resets received, by the state they hit.
    pub resets_received: BTreeMap<TcpState, u64>,
    /// Of the resets received in ESTABLISHED, those that hit a connection
    /// ESTABLISHED for at least `AggregatorConfig::long_established_ns`
    /// (default 120 s): half-open connections. Time in ESTABLISHED stands in
    /// for idle time, which tracepoints cannot see (they see no data).
    #[serde(default)]
    pub resets_received_long_established: u64,
    /// Data segments retransmitted (tcp_retransmit_skb).
    pub retransmits: u64,
    /// The longest-lived sockets in a non-LISTEN state, oldest first (at most 10).
    pub oldest: Vec<StuckSocket>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptQueue {
    pub len: u32,
    pub max: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// Sockets in this state now (tracked sockets plus the sock_diag census
    /// for TIME_WAIT and orphaned FIN_WAIT2, which tracepoints never show).
    pub now: u64,
    /// Age in this state of the oldest of them, in seconds.
    pub oldest_s: Option<f64>,
    /// False when the oldest socket predates tracing: its age is then at
    /// least `oldest_s` ("≥"), not exactly.
    pub oldest_exact: bool,
    /// Transitions into this state.
    pub entered: u64,
    /// Transitions out of this state, by the next state.
    pub exits: BTreeMap<TcpState, u64>,
    /// Time spent in this state by sockets that left it, when known.
    pub dwell: Option<Dwell>,
    /// Exits whose time in state is unknown (the stay began before tracing).
    pub dwell_unknown: u64,
}

/// A distribution of durations in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dwell {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// Non-empty buckets, each counting values up to `le_us` (powers of 4 µs).
    pub buckets: Vec<Bucket>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_us: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Handshakes {
    /// Passive opens that reached ESTABLISHED.
    pub completed: u64,
    /// Requests that used up tcp_synack_retries SYN-ACK retransmits and
    /// never produced a connection.
    pub failed: u64,
    /// SYN-ACK sent to final ACK, for completed handshakes.
    pub time: Option<Dwell>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetCount {
    /// The kernel's reason name (`NO_SOCKET`, `TCP_ABORT_ON_CLOSE`, ...), or
    /// its number, or `unknown` on kernels without reasons.
    pub reason: String,
    /// The state before the reset; `None` when no socket matched the packet.
    pub state_before: Option<TcpState>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StuckSocket {
    pub state: TcpState,
    pub local: String,
    pub remote: String,
    pub netns: u32,
    /// Seconds in `state`; a lower bound when `exact` is false.
    pub age_s: f64,
    pub exact: bool,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

impl Snapshot {
    /// The row for (port, direction), if present.
    pub fn port(&self, port: u16, direction: Direction) -> Option<&PortSnapshot> {
        self.ports
            .iter()
            .find(|p| p.port == Some(port) && p.direction == direction)
    }
}

impl PortSnapshot {
    /// A row with nothing counted yet.
    pub fn empty(port: Option<u16>, direction: Direction) -> Self {
        Self {
            port,
            direction,
            listening: false,
            accept_queue: None,
            transitions: 0,
            states: BTreeMap::new(),
            synack_retrans: 0,
            handshakes: Handshakes::default(),
            resets_sent: Vec::new(),
            resets_received: BTreeMap::new(),
            resets_received_long_established: 0,
            retransmits: 0,
            oldest: Vec::new(),
        }
    }

    /// Sockets in `state` now.
    pub fn now(&self, state: TcpState) -> u64 {
        self.states.get(&state).map_or(0, |s| s.now)
    }

    /// Resets sent, all reasons.
    pub fn resets_sent_total(&self) -> u64 {
        self.resets_sent.iter().map(|r| r.count).sum()
    }
}
