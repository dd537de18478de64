//! Live socket tracking: what state each socket is in, since when, who owns it,
//! and how it was opened. Time in state is computed here, from consecutive
//! transitions of the same socket, so the kernel needs no per-socket map.
//!
//! Sockets are keyed by their cookie (tp_btf) or kernel address (classic
//! tracepoints). Addresses are reused at once (TCP slabs are RCU-typesafe), so
//! CLOSE->SYN_SENT, CLOSE->LISTEN and LISTEN->SYN_RECV always begin a new life,
//! and CLOSE ends one.

use std::collections::HashSet;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;

use crate::event::{Detail, Event, Task};
use crate::tcp::TcpState;

/// How a socket came to be, which decides the port it is attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// connect(): belongs to its remote port, direction "out".
    Active,
    /// accepted from a listener: belongs to its local port, direction "in".
    Passive,
    /// first seen mid-life (it predates tracing, or its opening was lost).
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Sock {
    pub state: TcpState,
    /// When it entered `state`; `None` if that predates what we saw.
    pub since_ns: Option<u64>,
    /// When tracking first saw it: a lower bound of its age in `state` when
    /// `since_ns` is unknown.
    pub first_seen_ns: u64,
    pub owner: Option<Task>,
    pub origin: Origin,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Sock {
    /// Nanoseconds in the current state at `now_ns`, and whether that is
    /// exact (false: a lower bound, the stay began before tracking).
    pub fn age_ns(&self, now_ns: u64) -> (u64, bool) {
        match self.since_ns {
            Some(since) => (now_ns.saturating_sub(since), true),
            None => (now_ns.saturating_sub(self.first_seen_ns), false),
        }
    }
}

/// What tracking adds to an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Note {
    /// State events: time spent in the old state; `None` = unknown.
    pub dwell_ns: Option<u64>,
    /// The transition began a new socket life (CLOSE->SYN_SENT, CLOSE->LISTEN,
    /// LISTEN->SYN_RECV): there is no time in the old state to speak of.
    pub new_life: bool,
    /// The owning process, captured when the socket (or its listener) was
    /// created in process context.
    pub owner: Option<Task>,
    /// Resets sent: the state the socket was in before the reset.
    pub state_before: Option<TcpState>,
    /// How the socket was opened (Unknown for events without a socket).
    pub origin: Option<Origin>,
    /// A caught record that repeats its socket's last transition: the event
    /// was handled already, and this record must be dropped (see
    /// [`Tracker::repeats`]).
    pub repeat: bool,
}

/// How long after a socket's CLOSE a reset may still be matched to it: active
/// resets are traced just after the CLOSE transition (net/ipv4/tcp.c: __tcp_close).
const CLOSE_MATCH_NS: u64 = 1_000_000_000;
/// Slots for recently closed sockets (a power of two). A socket's slot is
/// fixed by its id and a later close in the same slot takes it over: the reset
/// follows its CLOSE within microseconds (the same call), long before 4,096
/// other closes could land there, and a table costs one store per close where
/// a map with an eviction queue cost three hash operations.
const RECENTLY_CLOSED: usize = 4096;

/// A socket that just reached CLOSE.
#[derive(Clone, Copy)]
struct Closed {
    sock_id: u64,
    before: TcpState,
    at_ns: u64,
    owner: Option<Task>,
    origin: Origin,
}

fn closed_slot(sock_id: u64) -> usize {
    // Fibonacci hashing: cookies are sequential, addresses slab-aligned; the
    // top bits of the product spread both.
    (sock_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - RECENTLY_CLOSED.trailing_zeros()))
        as usize
}

pub struct Tracker {
    /// Keyed by socket cookie: already a unique number, so the fast FxHash
    /// (not SipHash's DoS resistance) is the right trade on the per-event path.
    socks: FxHashMap<u64, Sock>,
    /// (netns, local port) -> owner of the listener, inherited by accepted sockets.
    listeners: FxHashMap<(u32, u16), Option<Task>>,
    closed: Box<[Option<Closed>]>,
    max_socks: usize,
    /// New sockets not tracked because `max_socks` was reached.
    pub untracked: u64,
    /// Caught records dropped as repeats. The kernel's catcher program
    /// handles the state events the main program was skipped for, and, when
    /// other events run between the two programs' runs of one event, rarely
    /// one that it was not (tcptrace-ebpf/src/bpf/state.bpf.c). A socket
    /// cannot make the same transition twice in a row, so a caught record
    /// that repeats its socket's last one is such a repeat. Lost events are
    /// counted as skipped runs minus catches plus these.
    pub repeats: u64,
}

impl Tracker {
    pub fn new(max_socks: usize) -> Self {
        Self {
            socks: FxHashMap::default(),
            listeners: FxHashMap::default(),
            closed: vec![None; RECENTLY_CLOSED].into_boxed_slice(),
            max_socks,
            untracked: 0,
            repeats: 0,
        }
    }

    pub fn sockets(&self) -> impl Iterator<Item = (&u64, &Sock)> {
        self.socks.iter()
    }

    pub fn get(&self, sock_id: u64) -> Option<&Sock> {
        self.socks.get(&sock_id)
    }

    pub fn live(&self) -> usize {
        self.socks.len()
    }

    pub fn is_listener(&self, netns: u32, port: u16) -> bool {
        self.listeners.contains_key(&(netns, port))
    }

    /// Adds a socket that existed before tracing began (from the sock_diag
    /// census), unless it is already tracked. Its time in state is unknown:
    /// only a lower bound from `seen_ns` on.
    pub fn seed(
        &mut self,
        sock_id: u64,
        state: TcpState,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        seen_ns: u64,
    ) {
        if state == TcpState::Listen {
            self.listeners.entry((netns, local.port())).or_insert(None);
        }
        if self.socks.contains_key(&sock_id) {
            return;
        }
        if self.socks.len() >= self.max_socks {
            self.untracked += 1;
            return;
        }
        let sock = Sock {
            state,
            since_ns: None,
            first_seen_ns: seen_ns,
            owner: None,
            origin: Origin::Unknown,
            netns,
            local,
            remote,
        };
        self.socks.insert(sock_id, sock);
    }

    /// Drops tracked sockets that the census no longer sees although they were
    /// tracked before it was taken: their CLOSE was lost (ring overflow, or a
    /// path the tracepoint does not cover). Keeps memory bounded on long runs.
    /// Returns how many were dropped.
    pub fn retain_census(&mut self, alive: &HashSet<u64>, census_started_ns: u64) -> usize {
        let before = self.socks.len();
        self.socks.retain(|id, s| {
            alive.contains(id) || s.since_ns.unwrap_or(s.first_seen_ns) >= census_started_ns
        });
        before - self.socks.len()
    }

    /// Updates the tracked state with `ev` and returns what tracking knows of it.
    pub fn observe(&mut self, ev: &Event) -> Note {
        match ev.detail {
            Detail::State { old, new, .. } => self.transition(ev, old, new),
            Detail::SendReset {
                state: Some(TcpState::Close),
                ..
            } => {
                match self.closed[closed_slot(ev.sock_id)].filter(|c| {
                    c.sock_id == ev.sock_id && ev.ts_ns.saturating_sub(c.at_ns) <= CLOSE_MATCH_NS
                }) {
                    Some(c) => Note {
                        owner: c.owner,
                        origin: Some(c.origin),
                        state_before: Some(c.before),
                        ..Note::default()
                    },
                    None => Note::default(),
                }
            }
            Detail::SendReset { state, .. } => {
                let live = self.socks.get(&ev.sock_id).filter(|_| state.is_some());
                Note {
                    owner: live.and_then(|s| s.owner),
                    origin: live.map(|s| s.origin),
                    state_before: state,
                    ..Note::default()
                }
            }
            Detail::SynackRetrans { .. } | Detail::Retrans { .. } | Detail::RecvReset { .. } => {
                let live = self.socks.get(&ev.sock_id);
                Note {
                    owner: live.and_then(|s| s.owner),
                    origin: live.map(|s| s.origin),
                    ..Note::default()
                }
            }
        }
    }

    /// Whether `ev`, a caught old->new transition, repeats the last one its
    /// socket made: the socket is in `new` already, or it just closed from
    /// `old` (a CLOSE ends its tracking).
    fn repeats_last(&self, ev: &Event, old: TcpState, new: TcpState) -> bool {
        match self.socks.get(&ev.sock_id) {
            Some(sock) => sock.state == new,
            None => {
                new == TcpState::Close
                    && self.closed[closed_slot(ev.sock_id)]
                        .is_some_and(|c| c.sock_id == ev.sock_id && c.before == old)
            }
        }
    }

    fn transition(&mut self, ev: &Event, old: TcpState, new: TcpState) -> Note {
        use TcpState::{Close, Listen, SynRecv, SynSent};
        if ev.caught && self.repeats_last(ev, old, new) {
            self.repeats += 1;
            return Note {
                repeat: true,
                ..Note::default()
            };
        }
        let new_life = matches!((old, new), (Close, SynSent | Listen) | (Listen, SynRecv));
        let listener_owner = |t: &Self| {
            t.listeners
                .get(&(ev.netns, ev.local.port()))
                .copied()
                .flatten()
        };
        if new == Listen {
            self.listeners.insert((ev.netns, ev.local.port()), ev.task);
        } else if old == Listen && new == Close {
            self.listeners.remove(&(ev.netns, ev.local.port()));
        }
        // The common case, a tracked socket moving on: updated in place.
        if !new_life
            && new != Close
            && let Some(sock) = self.socks.get_mut(&ev.sock_id)
        {
            let dwell_ns = (sock.state == old)
                .then_some(sock.since_ns)
                .flatten()
                .map(|since| ev.ts_ns.saturating_sub(since));
            if ev.task.is_some() {
                sock.owner = ev.task;
            }
            sock.state = new;
            sock.since_ns = Some(ev.ts_ns);
            // The latest tuple: CLOSE->SYN_SENT shows local port 0, before
            // connect() picks one.
            sock.local = ev.local;
            sock.remote = ev.remote;
            return Note {
                dwell_ns,
                new_life,
                owner: sock.owner,
                state_before: None,
                origin: Some(sock.origin),
                repeat: false,
            };
        }
        let prev = self.socks.remove(&ev.sock_id).filter(|_| !new_life);
        let dwell_ns = prev
            .as_ref()
            .filter(|p| p.state == old)
            .and_then(|p| p.since_ns)
            .map(|since| ev.ts_ns.saturating_sub(since));
        let owner = match (ev.task, old, new) {
            (Some(task), _, _) => Some(task),
            (None, Listen, SynRecv) => listener_owner(self),
            _ => prev.as_ref().and_then(|p| p.owner),
        };
        let origin = match (old, new) {
            (Close, SynSent) => Origin::Active,
            (Listen, SynRecv) => Origin::Passive,
            (Close, Listen) => Origin::Unknown,
            _ => prev.as_ref().map_or(Origin::Unknown, |p| p.origin),
        };
        if new == Close {
            self.closed[closed_slot(ev.sock_id)] = Some(Closed {
                sock_id: ev.sock_id,
                before: old,
                at_ns: ev.ts_ns,
                owner,
                origin,
            });
        } else if self.socks.len() < self.max_socks {
            let sock = Sock {
                state: new,
                since_ns: Some(ev.ts_ns),
                first_seen_ns: prev.as_ref().map_or(ev.ts_ns, |p| p.first_seen_ns),
                owner,
                origin,
                netns: ev.netns,
                local: ev.local,
                remote: ev.remote,
            };
            self.socks.insert(ev.sock_id, sock);
        } else {
            self.untracked += 1;
        }
        Note {
            dwell_ns,
            new_life,
            owner,
            state_before: None,
            origin: Some(origin),
            repeat: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::Family;
    use TcpState::*;

    fn state(ts_ns: u64, id: u64, old: TcpState, new: TcpState) -> Event {
        Event {
            ts_ns,
            sock_id: id,
            id_is_addr: false,
            caught: false,
            netns: 1,
            family: Family::Ipv4,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
            task: None,
            detail: Detail::State {
                old,
                new,
                srtt_us: None,
                total_retrans: None,
            },
        }
    }

    #[test]
    fn dwell_is_the_time_between_transitions_and_unknown_for_sockets_seen_mid_life() {
        let mut t = Tracker::new(100);
        assert_eq!(
            t.observe(&state(1_000, 7, Established, CloseWait)).dwell_ns,
            None
        );
        assert_eq!(
            t.observe(&state(301_000, 7, CloseWait, LastAck)).dwell_ns,
            Some(300_000)
        );
        assert_eq!(
            t.observe(&state(302_000, 7, LastAck, Close)).dwell_ns,
            Some(1_000)
        );
        assert_eq!(t.live(), 0);
    }

    fn caught(ts_ns: u64, id: u64, old: TcpState, new: TcpState) -> Event {
        Event {
            caught: true,
            ..state(ts_ns, id, old, new)
        }
    }

    #[test]
    fn a_caught_record_repeating_its_sockets_last_transition_is_dropped() {
        let mut t = Tracker::new(100);
        t.observe(&state(1_000, 7, Close, SynSent));
        // The catcher wrote connect()'s event again: dropped, state untouched.
        let note = t.observe(&caught(1_200, 7, Close, SynSent));
        assert!(note.repeat);
        assert_eq!(t.repeats, 1);
        assert_eq!(
            t.get(7).map(|s| (s.state, s.since_ns)),
            Some((SynSent, Some(1_000)))
        );
        // A caught record that moves the socket on is an event.
        let note = t.observe(&caught(1_500, 7, SynSent, Established));
        assert_eq!((note.repeat, note.dwell_ns), (false, Some(500)));
        // The same transition, not caught, is never taken for a repeat.
        assert!(!t.observe(&state(1_600, 7, SynSent, Established)).repeat);
        // A repeat of the close, after the socket left tracking.
        t.observe(&state(2_000, 7, Established, Close));
        assert!(t.observe(&caught(2_100, 7, Established, Close)).repeat);
        assert_eq!(t.repeats, 2);
        // A closed socket that connects again lives anew: its next close is
        // no repeat of the first.
        t.observe(&state(3_000, 7, Close, SynSent));
        assert!(!t.observe(&caught(3_100, 7, SynSent, Close)).repeat);
        // Nor is a caught event of a socket the tracker has not seen.
        assert!(!t.observe(&caught(4_000, 8, Established, FinWait1)).repeat);
        assert_eq!(t.repeats, 2);
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_owner_and_are_passive() {
        let mut t = Tracker::new(100);
        let mut listen = state(0, 1, Close, Listen);
        listen.task = Some(Task {
            pid: 99,
            comm: "server".into(),
            cgroup_id: 5,
        });
        t.observe(&listen);
        assert!(t.is_listener(1, 8080));
        let note = t.observe(&state(10, 2, Listen, SynRecv));
        assert_eq!(note.owner.as_ref().map(|o| o.pid), Some(99));
        assert_eq!(note.origin, Some(Origin::Passive));
        let note = t.observe(&state(30, 2, SynRecv, Established));
        assert_eq!(
            (note.dwell_ns, note.origin),
            (Some(20), Some(Origin::Passive))
        );
        assert_eq!(
            note.owner.as_ref().map(|o| o.comm.to_string()),
            Some("server".to_string())
        );
    }

    #[test]
    fn a_socket_takes_the_port_connect_picked() {
        let mut t = Tracker::new(100);
        let mut connect = state(0, 9, Close, SynSent);
        connect.local.set_port(0);
        t.observe(&connect);
        assert_eq!(t.get(9).unwrap().local.port(), 0);
        let note = t.observe(&state(40, 9, SynSent, Established));
        assert_eq!(note.dwell_ns, Some(40));
        let sock = t.get(9).unwrap();
        assert_eq!((sock.local.port(), sock.state), (8080, Established));
        assert_eq!((sock.since_ns, sock.first_seen_ns), (Some(40), 0));
    }

    #[test]
    fn a_reused_address_starts_a_new_life() {
        let mut t = Tracker::new(100);
        t.observe(&state(0, 5, Close, SynSent));
        t.observe(&state(10, 5, SynSent, Established));
        // the same id reappears as a new connect without a CLOSE in between
        let note = t.observe(&state(50, 5, Close, SynSent));
        assert_eq!(note.dwell_ns, None);
        assert_eq!(t.get(5).unwrap().state, SynSent);
        assert_eq!(t.get(5).unwrap().since_ns, Some(50));
    }

    #[test]
    fn active_reset_takes_the_state_before_close() {
        let mut t = Tracker::new(100);
        let mut connect = state(0, 3, Close, SynSent);
        connect.task = Some(Task {
            pid: 7,
            comm: "client".into(),
            cgroup_id: 1,
        });
        assert!(t.observe(&connect).new_life);
        assert!(!t.observe(&state(5, 3, SynSent, Established)).new_life);
        t.observe(&state(900, 3, Established, Close));
        let mut rst = state(950, 3, Close, Close);
        rst.detail = Detail::SendReset {
            state: Some(Close),
            reason: Some(11),
        };
        let note = t.observe(&rst);
        assert_eq!(note.state_before, Some(Established));
        assert_eq!(note.owner.as_ref().map(|o| o.pid), Some(7));
        assert_eq!(note.origin, Some(Origin::Active));
        // too late to be this close's reset
        rst.ts_ns = 900 + CLOSE_MATCH_NS + 1;
        assert_eq!(t.observe(&rst).state_before, None);
        // a reset from a live socket reports its current state
        rst.detail = Detail::SendReset {
            state: Some(Listen),
            reason: Some(6),
        };
        assert_eq!(t.observe(&rst).state_before, Some(Listen));
        rst.detail = Detail::SendReset {
            state: None,
            reason: Some(1),
        };
        assert_eq!(t.observe(&rst).state_before, None);
    }

    #[test]
    fn seeded_sockets_have_a_lower_bound_age_and_vanish_when_the_census_loses_them() {
        let mut t = Tracker::new(100);
        let (l, r) = (
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
        );
        t.seed(1, CloseWait, 1, l, r, 1_000);
        t.seed(2, Listen, 1, l, "0.0.0.0:0".parse().unwrap(), 1_000);
        assert!(t.is_listener(1, 8080));
        assert_eq!(t.get(1).unwrap().age_ns(5_000), (4_000, false));
        // a transition makes the age exact
        t.observe(&state(6_000, 1, CloseWait, LastAck));
        assert_eq!(t.get(1).unwrap().age_ns(7_000), (1_000, true));
        // census at 10_000 sees only socket 2; socket 3 appeared after it began
        t.observe(&state(12_000, 3, Close, SynSent));
        let alive: HashSet<u64> = [2].into();
        assert_eq!(t.retain_census(&alive, 10_000), 1);
        assert!(t.get(1).is_none() && t.get(2).is_some() && t.get(3).is_some());
    }

    #[test]
    fn tracking_is_bounded() {
        let mut t = Tracker::new(2);
        for id in 0..5 {
            t.observe(&state(id, id, Close, SynSent));
        }
        assert_eq!((t.live(), t.untracked), (2, 3));
    }
}
