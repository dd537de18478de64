//! Event filters shared by the live and replayed event streams.

use crate::event::{Detail, Event};
use crate::tcp::{Family, TcpState};
use crate::track::Note;

/// What the user asked to see; an empty list means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Either side's port.
    pub ports: Vec<u16>,
    /// Old or new state of a transition; for other events, the state they
    /// concern (at the hook, or before a reset).
    pub states: Vec<TcpState>,
    pub family: Option<Family>,
    /// Network namespace inode.
    pub netns: Option<u32>,
}

impl Filter {
    pub fn matches(&self, ev: &Event, note: &Note) -> bool {
        if self.family.is_some_and(|f| f != ev.family) {
            return false;
        }
        if self.netns.is_some_and(|n| n != ev.netns) {
            return false;
        }
        if !self.ports.is_empty()
            && !self.ports.contains(&ev.local.port())
            && !self.ports.contains(&ev.remote.port())
        {
            return false;
        }
        self.states.is_empty()
            || event_states(ev, note)
                .iter()
                .flatten()
                .any(|s| self.states.contains(s))
    }
}

fn event_states(ev: &Event, note: &Note) -> [Option<TcpState>; 2] {
    match ev.detail {
        Detail::State { old, new, .. } => [Some(old), Some(new)],
        // The request a SYN-ACK is retransmitted for sits in SYN_RECV.
        Detail::SynackRetrans { .. } => [Some(TcpState::SynRecv), Some(TcpState::Listen)],
        Detail::Retrans { state, .. } | Detail::RecvReset { state } => [Some(state), None],
        Detail::SendReset { state, .. } => [state, note.state_before],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(lport: u16, rport: u16, detail: Detail) -> Event {
        Event {
            ts_ns: 0,
            sock_id: 1,
            id_is_addr: false,
            caught: false,
            netns: 9,
            family: Family::Ipv4,
            local: format!("127.0.0.1:{lport}").parse().unwrap(),
            remote: format!("127.0.0.1:{rport}").parse().unwrap(),
            task: None,
            detail,
        }
    }

    fn st(old: TcpState, new: TcpState) -> Detail {
        Detail::State {
            old,
            new,
            srtt_us: None,
            total_retrans: None,
        }
    }

    #[test]
    fn port_matches_either_side() {
        let f = Filter {
            ports: vec![8080],
            ..Filter::default()
        };
        let n = Note::default();
        assert!(f.matches(&ev(8080, 5000, st(TcpState::Listen, TcpState::SynRecv)), &n));
        assert!(f.matches(&ev(5000, 8080, st(TcpState::Close, TcpState::SynSent)), &n));
        assert!(!f.matches(&ev(5000, 8081, st(TcpState::Close, TcpState::SynSent)), &n));
    }

    #[test]
    fn state_matches_old_or_new_and_reset_context() {
        let f = Filter {
            states: vec![TcpState::CloseWait],
            ..Filter::default()
        };
        let n = Note::default();
        assert!(f.matches(
            &ev(1, 2, st(TcpState::Established, TcpState::CloseWait)),
            &n
        ));
        assert!(f.matches(&ev(1, 2, st(TcpState::CloseWait, TcpState::LastAck)), &n));
        assert!(!f.matches(&ev(1, 2, st(TcpState::SynSent, TcpState::Established)), &n));
        let rst = ev(
            1,
            2,
            Detail::SendReset {
                state: Some(TcpState::Close),
                reason: None,
            },
        );
        assert!(!f.matches(&rst, &n));
        let before = Note {
            state_before: Some(TcpState::CloseWait),
            ..Note::default()
        };
        assert!(f.matches(&rst, &before));
        assert!(f.matches(
            &ev(
                1,
                2,
                Detail::RecvReset {
                    state: TcpState::CloseWait
                }
            ),
            &n
        ));
    }

    #[test]
    fn family_and_netns() {
        let n = Note::default();
        let e = ev(1, 2, st(TcpState::Close, TcpState::SynSent));
        assert!(
            !Filter {
                family: Some(Family::Ipv6),
                ..Filter::default()
            }
            .matches(&e, &n)
        );
        assert!(
            Filter {
                family: Some(Family::Ipv4),
                ..Filter::default()
            }
            .matches(&e, &n)
        );
        assert!(
            !Filter {
                netns: Some(8),
                ..Filter::default()
            }
            .matches(&e, &n)
        );
        assert!(
            Filter {
                netns: Some(9),
                ..Filter::default()
            }
            .matches(&e, &n)
        );
    }
}
