//! Per-port aggregation: events in, snapshots out. Pure: no kernel, no
//! terminal, no HTTP. It attributes every socket to its service port, keeps
//! dwell-time histograms per (port, direction, state), SYN-ACK retransmits,
//! handshakes, resets by cause, and joins the live tracker and the sock_diag
//! census into "what is in each state now, and since when".

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use crate::event::{Detail, Event, Kind};
use crate::reasons::ResetReasons;
use crate::snapshot::{
    AcceptQueue, Bucket, Direction, Dwell, EventCounts, Handshakes, PortSnapshot, ResetCount,
    Snapshot, StateSnapshot, StuckSocket,
};
use crate::tcp::TcpState;
use crate::track::{Note, Origin, Tracker};

/// Kernel state numbers run 1..=13 (include/net/tcp_states.h); slot 0 and
/// unknown states share the last slot.
const STATE_SLOTS: usize = 15;
const OTHER_SLOT: usize = STATE_SLOTS - 1;

fn slot(state: TcpState) -> usize {
    match state {
        TcpState::Unknown(_) => OTHER_SLOT,
        known => usize::from(known.to_kernel()).min(OTHER_SLOT),
    }
}

fn state_of_slot(i: usize) -> Option<TcpState> {
    (1..=13)
        .contains(&i)
        .then(|| TcpState::from_kernel(i as u8))
}

/// Where a socket's numbers go: its service port and direction, or the
/// "other" row (`port: None`) once the port cap is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub port: Option<u16>,
    pub direction: Direction,
}

/// Linux's default net.ipv4.ip_local_port_range.
pub const DEFAULT_EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Attribution (DESIGN.md, "Port attribution"): an accepted socket belongs to
/// its local port ("in"), a connecting one to the remote port ("out"). One of
/// unknown origin goes to its local port if that port listens, or if only the
/// remote port is ephemeral (a server's TIME_WAIT after its listener closed);
/// else to the remote port.
pub fn attribute(
    origin: Origin,
    local: &SocketAddr,
    remote: &SocketAddr,
    local_listens: bool,
    ephemeral: &std::ops::RangeInclusive<u16>,
) -> (u16, Direction) {
    let inbound = match origin {
        Origin::Passive => true,
        Origin::Active => false,
        Origin::Unknown => {
            local_listens
                || (ephemeral.contains(&remote.port()) && !ephemeral.contains(&local.port()))
        }
    };
    if inbound {
        (local.port(), Direction::In)
    } else {
        (remote.port(), Direction::Out)
    }
}

#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    /// Distinct (port, direction) rows before folding into "other".
    pub max_ports: usize,
    /// net.ipv4.tcp_synack_retries: a request retransmitted this often with
    /// no connection is a failed handshake.
    pub synack_retries: u32,
    /// Only this network namespace (inode).
    pub netns: Option<u32>,
    /// Oldest sockets listed per port.
    pub oldest_per_port: usize,
    /// net.ipv4.ip_local_port_range, for attributing sockets of unknown origin.
    pub ephemeral: std::ops::RangeInclusive<u16>,
    /// A reset received in ESTABLISHED by a socket that had been ESTABLISHED
    /// at least this long counts in `resets_received_long_established`
    /// (half-open connections). Time in ESTABLISHED is a proxy for idle
    /// time: tracepoints see no data, so a busy long-lived connection counts
    /// too. Default 120 s (`findings::DEFAULT_HALF_OPEN_AFTER_S`).
    pub long_established_ns: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            max_ports: 4096,
            synack_retries: 5,
            netns: None,
            oldest_per_port: 10,
            ephemeral: DEFAULT_EPHEMERAL,
            long_established_ns: crate::findings::DEFAULT_HALF_OPEN_AFTER_S * 1_000_000_000,
        }
    }
}

/// Durations in microseconds, 2 significant digits: within 1%, which no
/// dwell-time question needs better, for a fifth to a seventh of the memory
/// of 3 digits. That matters beyond RSS: every state event records into one
/// of hundreds of histograms, and the smaller they are, the likelier the
/// bucket is in cache (replay benchmark: ~+25% events/s). The histogram grows
/// with the largest value seen, so a port whose sockets only live
/// milliseconds costs ~7 KiB per state instead of the ~30 KiB a 24-hour
/// range takes (128 counters of 8 bytes per power of two past 256 µs).
fn new_histogram() -> Histogram<u64> {
    Histogram::new(2).expect("2 significant digits is a valid precision")
}

/// Longest duration recorded (30 days), so one absurd value cannot grow a
/// histogram without bound.
const MAX_RECORD_US: u64 = 30 * 24 * 3600 * 1_000_000;

fn record(h: &mut Option<Histogram<u64>>, us: u64) {
    // `record` grows an auto-resizing histogram; `saturating_record` would clamp
    // to its current (tiny) range instead.
    let h = h.get_or_insert_with(new_histogram);
    if h.record(us.min(MAX_RECORD_US)).is_err() {
        h.saturating_record(us);
    }
}

#[derive(Clone, Default)]
struct StateStats {
    entered: u64,
    exits: [u64; STATE_SLOTS],
    dwell: Option<Histogram<u64>>,
    dwell_unknown: u64,
}

#[derive(Clone, Default)]
struct PortStats {
    transitions: u64,
    states: Vec<StateStats>,
    synack_retrans: u64,
    handshakes_completed: u64,
    handshakes_failed: u64,
    handshake_time: Option<Histogram<u64>>,
    /// (reset reason, state before) -> count.
    resets_sent: HashMap<(Option<u32>, Option<TcpState>), u64>,
    resets_received: [u64; STATE_SLOTS],
    /// Resets received in ESTABLISHED after `long_established_ns` in it.
    resets_received_long_established: u64,
    retransmits: u64,
}

/// `a -= b` for histograms, where `b` is an earlier copy of `a` (so every
/// value of `b` fits in `a`'s range).
fn histogram_minus(a: &mut Option<Histogram<u64>>, b: Option<&Histogram<u64>>) {
    if let (Some(a), Some(b)) = (a.as_mut(), b) {
        // Cannot fail: counts only grow and the range only widens.
        let _ = a.subtract(b);
    }
}

fn counts_minus<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a -= b;
    }
}

impl StateStats {
    fn minus(&mut self, base: &StateStats) {
        self.entered -= base.entered;
        counts_minus(&mut self.exits, &base.exits);
        histogram_minus(&mut self.dwell, base.dwell.as_ref());
        self.dwell_unknown -= base.dwell_unknown;
    }
}

impl PortStats {
    /// Leaves what happened since `base`, an earlier copy of this row.
    fn minus(&mut self, base: &PortStats) {
        self.transitions -= base.transitions;
        for (st, b) in self.states.iter_mut().zip(&base.states) {
            st.minus(b);
        }
        self.synack_retrans -= base.synack_retrans;
        self.handshakes_completed -= base.handshakes_completed;
        self.handshakes_failed -= base.handshakes_failed;
        histogram_minus(&mut self.handshake_time, base.handshake_time.as_ref());
        for (k, n) in &base.resets_sent {
            if let Some(m) = self.resets_sent.get_mut(k) {
                *m -= n;
            }
        }
        self.resets_sent.retain(|_, n| *n > 0);
        counts_minus(&mut self.resets_received, &base.resets_received);
        self.resets_received_long_established -= base.resets_received_long_established;
        self.retransmits -= base.retransmits;
    }

    /// Nothing was counted (histograms are empty when every count is 0).
    fn is_quiet(&self) -> bool {
        self.transitions == 0
            && self.synack_retrans == 0
            && self.handshakes_failed == 0
            && self.resets_sent.is_empty()
            && self.resets_received.iter().all(|n| *n == 0)
            && self.retransmits == 0
    }

    fn state(&mut self, st: TcpState) -> &mut StateStats {
        if self.states.is_empty() {
            self.states = vec![StateStats::default(); STATE_SLOTS];
        }
        &mut self.states[slot(st)]
    }
}

/// A handshake the listener is still retransmitting SYN-ACKs for.
#[derive(Clone, Copy, Debug)]
struct Pending {
    row: usize,
    last_ts_ns: u64,
    since_first_us: u64,
    retrans: u32,
}

/// Requests followed at once; more are not followed (and counted).
const MAX_PENDING: usize = 65_536;
/// A request not retransmitted for this long was answered or abandoned
/// (client reset, syncookies): forget it without calling it failed.
const PENDING_FORGET_NS: u64 = 130 * 1_000_000_000;

/// sock_diag's view of the moment: what the tracepoints cannot show.
#[derive(Clone, Debug, Default)]
pub struct CensusView {
    /// Timewait mini-sockets (TIME_WAIT and orphaned FIN_WAIT2): count and
    /// oldest age in milliseconds, per (port, direction, state).
    pub timewait: HashMap<(u16, Direction, TcpState), (u64, u64)>,
    /// Listener accept queues, summed per port over namespaces.
    pub accept_queues: HashMap<u16, AcceptQueue>,
}

#[derive(Clone)]
pub struct Aggregator {
    cfg: AggregatorConfig,
    /// The rows, in order of first use: at most `max_ports` named ones, plus
    /// an "other" row per direction once the cap is reached.
    rows: Vec<(PortKey, PortStats)>,
    /// Index into `rows` of each (port, direction), at [`row_slot`]; NO_ROW
    /// if none yet. Ports are 16-bit, so a direct table (512 KiB, touched only
    /// where ports are used) replaces two hash lookups per event.
    row_of: Box<[u32]>,
    named_rows: usize,
    /// The "other" row of each direction, once created.
    other_rows: [Option<usize>; 2],
    /// Distinct (port, direction) folded into "other".
    folded: u64,
    /// Snapshots leave out rows with nothing counted (see [`Aggregator::since`]).
    quiet_rows_hidden: bool,
    pending: FxHashMap<(u32, SocketAddr, SocketAddr), Pending>,
    /// Requests not followed because `pending` was full.
    pub pending_overflow: u64,
    counts: EventCounts,
    /// Events by kind, indexed by `Kind as usize`.
    by_kind: [u64; Kind::ALL.len()],
    start_ns: u64,
    census: CensusView,
}

const NO_ROW: u32 = u32::MAX;

fn row_slot(port: u16, direction: Direction) -> usize {
    usize::from(port) << 1 | direction as usize
}

impl Aggregator {
    pub fn new(cfg: AggregatorConfig, start_ns: u64) -> Self {
        Self {
            cfg,
            rows: Vec::new(),
            row_of: vec![NO_ROW; 2 << 16].into_boxed_slice(),
            named_rows: 0,
            other_rows: [None; 2],
            folded: 0,
            quiet_rows_hidden: false,
            pending: FxHashMap::default(),
            pending_overflow: 0,
            counts: EventCounts::default(),
            by_kind: [0; Kind::ALL.len()],
            start_ns,
            census: CensusView::default(),
        }
    }

    pub fn config(&self) -> &AggregatorConfig {
        &self.cfg
    }

    /// Changes [`AggregatorConfig::long_established_ns`] for the resets
    /// received from now on.
    pub fn set_long_established_ns(&mut self, ns: u64) {
        self.cfg.long_established_ns = ns;
    }

    /// Counts the events lost so far: `lost` in all, of which `skipped`
    /// were program runs the kernel skipped and nothing caught (the rest
    /// found the ring buffer full; see [`EventCounts::lost_skipped`]).
    pub fn set_lost(&mut self, lost: u64, skipped: u64) {
        self.counts.lost = lost;
        self.counts.lost_skipped = skipped.min(lost);
    }

    pub fn add_undecodable(&mut self, n: u64) {
        self.counts.undecodable += n;
    }

    pub fn set_census(&mut self, census: CensusView) {
        self.census = census;
    }

    pub fn census(&self) -> &CensusView {
        &self.census
    }

    pub fn lost(&self) -> u64 {
        self.counts.lost
    }

    pub fn undecodable(&self) -> u64 {
        self.counts.undecodable
    }

    /// The aggregates of what happened since `base`, a copy of this
    /// aggregator taken at `base_ns`: how the daemon's interval reports are
    /// made from the one cumulative aggregator, so that each event is
    /// aggregated once. Rows are only ever appended, so row `i` of `base` is
    /// row `i` here. Lost and undecodable records count since `base` too.
    /// Pending handshakes are the current ones; rows with
    /// nothing new are left out, as a fresh aggregator would not have them.
    #[must_use]
    pub fn since(&self, base: &Aggregator, base_ns: u64) -> Aggregator {
        let mut out = self.clone();
        out.start_ns = base_ns;
        for ((_, row), (_, b)) in out.rows.iter_mut().zip(&base.rows) {
            row.minus(b);
        }
        out.counts.total -= base.counts.total;
        out.counts.undecodable -= base.counts.undecodable;
        out.counts.lost = out.counts.lost.saturating_sub(base.counts.lost);
        out.counts.lost_skipped = out
            .counts
            .lost_skipped
            .saturating_sub(base.counts.lost_skipped);
        counts_minus(&mut out.by_kind, &base.by_kind);
        out.pending_overflow -= base.pending_overflow;
        out.quiet_rows_hidden = true;
        out
    }

    /// The row of (port, direction), created on first use; past `max_ports`
    /// named rows, the direction's "other" row.
    fn row(&mut self, port: u16, direction: Direction) -> usize {
        let slot = row_slot(port, direction);
        if let Some(&i) = self.row_of.get(slot).filter(|&&i| i != NO_ROW) {
            return i as usize;
        }
        let i = if self.named_rows < self.cfg.max_ports {
            self.named_rows += 1;
            self.push_row(Some(port), direction)
        } else {
            // The slot remembers its fold, so each key is counted once.
            self.folded += 1;
            if let Some(i) = self.other_rows[direction as usize] {
                i
            } else {
                let i = self.push_row(None, direction);
                self.other_rows[direction as usize] = Some(i);
                i
            }
        };
        self.row_of[slot] = i as u32;
        i
    }

    fn push_row(&mut self, port: Option<u16>, direction: Direction) -> usize {
        self.rows
            .push((PortKey { port, direction }, PortStats::default()));
        self.rows.len() - 1
    }

    fn key(&mut self, port: u16, direction: Direction) -> PortKey {
        let i = self.row(port, direction);
        self.rows[i].0
    }

    /// The row of a socket-bearing event. Whether the local port listens
    /// matters only for sockets of unknown origin: looked up only for them.
    fn row_of_event(&mut self, ev: &Event, note: &Note, tracker: &Tracker) -> usize {
        let origin = note.origin.unwrap_or(Origin::Unknown);
        let listens = origin == Origin::Unknown && tracker.is_listener(ev.netns, ev.local.port());
        let (port, dir) = attribute(origin, &ev.local, &ev.remote, listens, &self.cfg.ephemeral);
        self.row(port, dir)
    }

    fn stats(&mut self, row: usize) -> &mut PortStats {
        &mut self.rows[row].1
    }

    /// Folds one event, with what the tracker noted about it (the tracker must
    /// have observed the event first).
    pub fn add(&mut self, ev: &Event, note: &Note, tracker: &Tracker) {
        self.counts.total += 1;
        // An array, not the snapshot's map: no allocation per event.
        self.by_kind[ev.kind() as usize] += 1;
        if self.cfg.netns.is_some_and(|n| n != ev.netns) {
            return;
        }
        match ev.detail {
            Detail::State {
                old, new, srtt_us, ..
            } => {
                let row = self.row_of_event(ev, note, tracker);
                let handshake = (old == TcpState::SynRecv && new == TcpState::Established)
                    .then(|| self.handshake_time_us(ev, srtt_us));
                let stats = self.stats(row);
                stats.transitions += 1;
                let from = stats.state(old);
                from.exits[slot(new)] += 1;
                match note.dwell_ns {
                    Some(ns) => record(&mut from.dwell, ns / 1_000),
                    None if !note.new_life => from.dwell_unknown += 1,
                    None => {}
                }
                stats.state(new).entered += 1;
                if let Some(time) = handshake {
                    stats.handshakes_completed += 1;
                    if let Some(us) = time {
                        record(&mut stats.handshake_time, us);
                    }
                }
            }
            Detail::SynackRetrans {
                retrans,
                since_first_us,
            } => {
                let row = self.row(ev.local.port(), Direction::In);
                self.stats(row).synack_retrans += 1;
                let pending = Pending {
                    row,
                    last_ts_ns: ev.ts_ns,
                    since_first_us,
                    retrans,
                };
                let req = (ev.netns, ev.local, ev.remote);
                if self.pending.len() < MAX_PENDING || self.pending.contains_key(&req) {
                    self.pending.insert(req, pending);
                } else {
                    self.pending_overflow += 1;
                }
            }
            Detail::Retrans { .. } => {
                let row = self.row_of_event(ev, note, tracker);
                self.stats(row).retransmits += 1;
            }
            Detail::SendReset { state, reason } => {
                // No socket: a packet hit a local port nobody listens on.
                let row = if state.is_none() {
                    self.row(ev.local.port(), Direction::In)
                } else {
                    self.row_of_event(ev, note, tracker)
                };
                let before = if state.is_none() {
                    None
                } else {
                    note.state_before
                };
                *self
                    .stats(row)
                    .resets_sent
                    .entry((reason, before))
                    .or_default() += 1;
            }
            Detail::RecvReset { state } => {
                let row = self.row_of_event(ev, note, tracker);
                // The reset is traced before the socket's move to CLOSE, so
                // the tracker still has it in the state the reset hit. Its
                // time in ESTABLISHED is a proxy for idle time (tracepoints
                // do not see data); a stay that began before tracing counts
                // with its lower bound.
                let long = state == TcpState::Established
                    && tracker.get(ev.sock_id).is_some_and(|s| {
                        s.state == TcpState::Established
                            && s.age_ns(ev.ts_ns).0 >= self.cfg.long_established_ns
                    });
                let stats = self.stats(row);
                stats.resets_received[slot(state)] += 1;
                if long {
                    stats.resets_received_long_established += 1;
                }
            }
        }
    }

    /// SYN-ACK sent to final ACK. With retransmits, from the pending request:
    /// the first SYN-ACK's age at its last retransmit plus the time since. The
    /// kernel takes no RTT sample then (Karn's rule, net/ipv4/tcp_minisocks.c:
    /// tcp_synack_rtt_meas), while without retransmits the child's first RTT
    /// sample is exactly that interval.
    fn handshake_time_us(&mut self, ev: &Event, srtt_us: Option<u32>) -> Option<u64> {
        // Usually nothing is pending: skip hashing two socket addresses.
        if !self.pending.is_empty()
            && let Some(p) = self.pending.remove(&(ev.netns, ev.local, ev.remote))
        {
            return Some(
                p.since_first_us
                    .saturating_add(ev.ts_ns.saturating_sub(p.last_ts_ns) / 1_000),
            );
        }
        srtt_us.filter(|us| *us > 0).map(u64::from)
    }

    /// Settles pending requests at `now_ns`: one that used up its SYN-ACK
    /// retransmits and outlived the last timeout (1 s << retries, from
    /// TCP_TIMEOUT_INIT doubling, net/ipv4/inet_connection_sock.c:
    /// reqsk_timer_handler) never completed.
    pub fn settle(&mut self, now_ns: u64) {
        let retries = self.cfg.synack_retries;
        let expiry_ns = (1_000_000_000u64 << retries.min(7)) + 500_000_000;
        let mut failed = Vec::new();
        self.pending.retain(|_, p| {
            let idle = now_ns.saturating_sub(p.last_ts_ns);
            if p.retrans >= retries && idle > expiry_ns {
                failed.push(p.row);
                false
            } else {
                idle <= PENDING_FORGET_NS
            }
        });
        for row in failed {
            self.stats(row).handshakes_failed += 1;
        }
    }

    /// The picture at `now_ns` (CLOCK_MONOTONIC), joining the aggregates with
    /// the live sockets of `tracker` and the last census.
    pub fn snapshot(
        &mut self,
        tracker: &Tracker,
        now_ns: u64,
        time: String,
        reasons: &ResetReasons,
    ) -> Snapshot {
        self.settle(now_ns);
        let mut rows: BTreeMap<PortKey, PortSnapshot> = BTreeMap::new();
        for (key, stats) in &self.rows {
            if !(self.quiet_rows_hidden && stats.is_quiet()) {
                rows.insert(*key, port_snapshot(*key, stats, reasons));
            }
        }
        let mut oldest: HashMap<PortKey, Vec<StuckSocket>> = HashMap::new();
        let mut sockets_tracked = 0;
        for (_, sock) in tracker.sockets() {
            if self.cfg.netns.is_some_and(|n| n != sock.netns) {
                continue;
            }
            sockets_tracked += 1;
            let listens = tracker.is_listener(sock.netns, sock.local.port());
            let (port, dir) = if sock.state == TcpState::Listen {
                (sock.local.port(), Direction::In)
            } else {
                attribute(
                    sock.origin,
                    &sock.local,
                    &sock.remote,
                    listens,
                    &self.cfg.ephemeral,
                )
            };
            let key = self.key(port, dir);
            let row = rows.entry(key).or_insert_with(|| empty_row(key));
            let (age_ns, exact) = sock.age_ns(now_ns);
            let age_s = age_ns as f64 / 1e9;
            if sock.state == TcpState::Listen {
                row.listening = true;
            }
            note_now(row.states.entry(sock.state).or_default(), 1, age_s, exact);
            if sock.state != TcpState::Listen {
                oldest.entry(key).or_default().push(StuckSocket {
                    state: sock.state,
                    local: sock.local.to_string(),
                    remote: sock.remote.to_string(),
                    netns: sock.netns,
                    age_s,
                    exact,
                    pid: sock.owner.as_ref().map(|o| o.pid),
                    comm: sock.owner.as_ref().map(|o| o.comm.to_string()),
                });
            }
        }
        for (&(port, dir, state), &(count, oldest_ms)) in &self.census.timewait.clone() {
            let key = self.key(port, dir);
            let row = rows.entry(key).or_insert_with(|| empty_row(key));
            note_now(
                row.states.entry(state).or_default(),
                count,
                oldest_ms as f64 / 1e3,
                true,
            );
        }
        for (port, queue) in &self.census.accept_queues {
            if let Some(row) = rows.get_mut(&PortKey {
                port: Some(*port),
                direction: Direction::In,
            }) {
                row.accept_queue = Some(*queue);
            }
        }
        for (key, mut list) in oldest {
            list.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
            list.truncate(self.cfg.oldest_per_port);
            if let Some(row) = rows.get_mut(&key) {
                row.oldest = list;
            }
        }
        let mut counts = self.counts.clone();
        counts.by_kind = Kind::ALL
            .iter()
            .filter(|k| self.by_kind[**k as usize] > 0)
            .map(|k| (k.name().to_string(), self.by_kind[*k as usize]))
            .collect();
        counts.untracked = tracker.untracked;
        counts.folded_ports = self.folded;
        Snapshot {
            time,
            uptime_s: now_ns.saturating_sub(self.start_ns) as f64 / 1e9,
            events: counts,
            sockets_tracked,
            findings: Vec::new(),
            // The "other" rows (port None) sort first in the map; show them last.
            ports: {
                let (other, named): (Vec<_>, Vec<_>) =
                    rows.into_values().partition(|r| r.port.is_none());
                named.into_iter().chain(other).collect()
            },
        }
    }
}

fn note_now(st: &mut StateSnapshot, count: u64, age_s: f64, exact: bool) {
    st.now += count;
    let older = st.oldest_s.is_none_or(|o| age_s > o);
    if older {
        st.oldest_s = Some(age_s);
        st.oldest_exact = exact;
    }
}

fn empty_row(key: PortKey) -> PortSnapshot {
    PortSnapshot::empty(key.port, key.direction)
}

fn port_snapshot(key: PortKey, s: &PortStats, reasons: &ResetReasons) -> PortSnapshot {
    let mut row = empty_row(key);
    row.transitions = s.transitions;
    for (i, st) in s.states.iter().enumerate() {
        let Some(state) = state_of_slot(i) else {
            continue;
        };
        if st.entered == 0
            && recorded(st.dwell.as_ref()).is_none()
            && st.dwell_unknown == 0
            && st.exits.iter().all(|n| *n == 0)
        {
            continue;
        }
        let exits = st
            .exits
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(j, n)| state_of_slot(j).map(|to| (to, *n)))
            .collect();
        row.states.insert(
            state,
            StateSnapshot {
                entered: st.entered,
                exits,
                dwell: recorded(st.dwell.as_ref()).map(dwell_summary),
                dwell_unknown: st.dwell_unknown,
                ..StateSnapshot::default()
            },
        );
    }
    row.synack_retrans = s.synack_retrans;
    row.handshakes = Handshakes {
        completed: s.handshakes_completed,
        failed: s.handshakes_failed,
        time: recorded(s.handshake_time.as_ref()).map(dwell_summary),
    };
    row.resets_sent = s
        .resets_sent
        .iter()
        .map(|(&(reason, state_before), &count)| ResetCount {
            reason: reason.map_or_else(|| "unknown".to_string(), |r| reasons.name(r).into_owned()),
            state_before,
            count,
        })
        .collect();
    row.resets_sent
        .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    row.resets_received = s
        .resets_received
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .filter_map(|(i, n)| state_of_slot(i).map(|st| (st, *n)))
        .collect();
    row.resets_received_long_established = s.resets_received_long_established;
    row.retransmits = s.retransmits;
    row
}

/// A histogram with something in it (one left empty by [`Aggregator::since`]
/// reads as none).
fn recorded(h: Option<&Histogram<u64>>) -> Option<&Histogram<u64>> {
    h.filter(|h| !h.is_empty())
}

/// Percentiles and power-of-4 buckets of a histogram.
pub fn dwell_summary(h: &Histogram<u64>) -> Dwell {
    let mut buckets = Vec::new();
    let mut le = 1u64;
    let mut below = 0u64;
    while below < h.len() {
        let upto = h.count_between(0, le);
        if upto > below {
            buckets.push(Bucket {
                le_us: le,
                count: upto - below,
            });
        }
        below = upto;
        le = le.saturating_mul(4);
    }
    Dwell {
        count: h.len(),
        min_us: h.min(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: h.mean(),
        buckets,
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
