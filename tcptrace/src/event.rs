//! Typed TCP events and the one place that decodes them from ring-buffer records.
//!
//! A record (`tcptrace_ebpf::RawEvent`) becomes an [`Event`] here and nowhere
//! else: kinds, states, families and flags turn into domain types, and a record
//! that makes no sense is a [`DecodeError`], counted by the caller, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;
use tcptrace_ebpf as abi;
use thiserror::Error;

use crate::tcp::{Family, TcpState};

/// The process that owned a socket, captured in process context (connect/listen).
/// `Copy`: every tracked socket and every event's note carries its owner, so
/// it must cost no allocation and no reference count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
}

/// A command name as the kernel keeps it: `TASK_COMM_LEN` (16) bytes,
/// NUL-padded, not necessarily UTF-8 (include/linux/sched.h).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn from_kernel(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The name up to its NUL, invalid UTF-8 replaced.
    pub fn to_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }
}

/// At most 15 bytes, as the kernel truncates (the 16th is the NUL).
impl From<&str> for Comm {
    fn from(name: &str) -> Self {
        let mut bytes = [0; 16];
        let n = name.len().min(15);
        bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self(bytes)
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.to_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_str())
    }
}

/// What happened, with what that kind of event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// `sock:inet_sock_set_state`.
    State {
        old: TcpState,
        new: TcpState,
        /// At ->ESTABLISHED: the first smoothed RTT (µs) and retransmits so far.
        srtt_us: Option<u32>,
        total_retrans: Option<u32>,
    },
    /// `tcp:tcp_retransmit_synack`: the socket is the listener, the tuple the
    /// pending request's.
    SynackRetrans { retrans: u32, since_first_us: u64 },
    /// `tcp:tcp_retransmit_skb`.
    Retrans { state: TcpState, total_retrans: u32 },
    /// `tcp:tcp_send_reset`. `state` is the socket's state at the hook (already
    /// CLOSE for active resets); `None` when no socket matched the packet.
    SendReset {
        state: Option<TcpState>,
        reason: Option<u32>,
    },
    /// `tcp:tcp_receive_reset`: `state` is the state the reset hit.
    RecvReset { state: TcpState },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    State,
    SynackRetrans,
    Retrans,
    SendReset,
    RecvReset,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::State,
        Kind::SynackRetrans,
        Kind::Retrans,
        Kind::SendReset,
        Kind::RecvReset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::State => "state",
            Kind::SynackRetrans => "synack_retrans",
            Kind::Retrans => "retrans",
            Kind::SendReset => "send_reset",
            Kind::RecvReset => "recv_reset",
        }
    }
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Socket cookie, or kernel address when `id_is_addr`; 0 if no socket.
    pub sock_id: u64,
    /// The id is a reusable kernel address (classic tracepoints).
    pub id_is_addr: bool,
    /// Written by the catcher program for an event the kernel skipped the
    /// main one for (see state.bpf.c); rarely a repeat, which the tracker
    /// recognises.
    pub caught: bool,
    /// Network namespace inode, as in `ls -l /proc/PID/ns/net`.
    pub netns: u32,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub task: Option<Task>,
    pub detail: Detail,
}

impl Event {
    pub fn kind(&self) -> Kind {
        match self.detail {
            Detail::State { .. } => Kind::State,
            Detail::SynackRetrans { .. } => Kind::SynackRetrans,
            Detail::Retrans { .. } => Kind::Retrans,
            Detail::SendReset { .. } => Kind::SendReset,
            Detail::RecvReset { .. } => Kind::RecvReset,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than `struct tcptrace_event`.
    #[error("short record: {0} bytes, expected {expected}", expected = abi::EVENT_SIZE)]
    Short(usize),
    /// The kind byte is not one of `enum tcptrace_kind`.
    #[error("unknown event kind {0}")]
    Kind(u8),
    /// Neither AF_INET nor AF_INET6.
    #[error("unknown address family {0}")]
    Family(u16),
}

/// Decodes one ring-buffer record. Inlined, as `decode_raw`: an `Event` is
/// ~150 bytes, and built in place in the caller it is not copied again.
#[inline]
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let raw = abi::RawEvent::from_bytes(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    decode_raw(&raw)
}

/// Decodes a record already copied out of the ring.
#[inline]
pub fn decode_raw(raw: &abi::RawEvent) -> Result<Event, DecodeError> {
    let family = Family::from_kernel(raw.family).ok_or(DecodeError::Family(raw.family))?;
    let state = TcpState::from_kernel;
    let detail = match raw.kind {
        abi::KIND_STATE => {
            let established = state(raw.newstate) == TcpState::Established;
            Detail::State {
                old: state(raw.oldstate),
                new: state(raw.newstate),
                srtt_us: established.then_some(raw.srtt_us),
                total_retrans: established.then_some(raw.retrans),
            }
        }
        abi::KIND_SYNACK_RETRANS => Detail::SynackRetrans {
            retrans: raw.retrans,
            since_first_us: raw.synack_age_us,
        },
        abi::KIND_RETRANS => Detail::Retrans {
            state: state(raw.oldstate),
            total_retrans: raw.retrans,
        },
        abi::KIND_SEND_RESET => Detail::SendReset {
            state: (raw.flags & abi::F_NO_SOCKET == 0).then(|| state(raw.oldstate)),
            reason: (raw.flags & abi::F_REASON != 0).then_some(raw.reason),
        },
        abi::KIND_RECV_RESET => Detail::RecvReset {
            state: state(raw.oldstate),
        },
        other => return Err(DecodeError::Kind(other)),
    };
    let task = (raw.flags & abi::F_TASK != 0).then(|| Task {
        pid: raw.pid,
        comm: Comm::from_kernel(raw.comm),
        cgroup_id: raw.cgroup_id,
    });
    Ok(Event {
        ts_ns: raw.ts_ns,
        sock_id: raw.sock_id,
        id_is_addr: raw.flags & abi::F_ADDR_ID != 0,
        caught: raw.flags & abi::F_CAUGHT != 0,
        netns: raw.netns,
        family,
        local: SocketAddr::new(ip(family, &raw.saddr), raw.sport),
        remote: SocketAddr::new(ip(family, &raw.daddr), raw.dport),
        task,
        detail,
    })
}

fn ip(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

/// Builds the record the kernel would write for `event` (tests, recordings).
pub fn encode(event: &Event) -> abi::RawEvent {
    let mut raw = abi::RawEvent {
        ts_ns: event.ts_ns,
        sock_id: event.sock_id,
        netns: event.netns,
        family: match event.family {
            Family::Ipv4 => Family::AF_INET,
            Family::Ipv6 => Family::AF_INET6,
        },
        sport: event.local.port(),
        dport: event.remote.port(),
        ..abi::RawEvent::default()
    };
    if event.id_is_addr {
        raw.flags |= abi::F_ADDR_ID;
    }
    if event.caught {
        raw.flags |= abi::F_CAUGHT;
    }
    put_ip(&mut raw.saddr, event.local.ip());
    put_ip(&mut raw.daddr, event.remote.ip());
    if let Some(task) = &event.task {
        raw.flags |= abi::F_TASK;
        raw.pid = task.pid;
        raw.cgroup_id = task.cgroup_id;
        raw.comm = *task.comm.bytes();
    }
    match event.detail {
        Detail::State {
            old,
            new,
            srtt_us,
            total_retrans,
        } => {
            raw.kind = abi::KIND_STATE;
            raw.oldstate = old.to_kernel();
            raw.newstate = new.to_kernel();
            raw.srtt_us = srtt_us.unwrap_or(0);
            raw.retrans = total_retrans.unwrap_or(0);
        }
        Detail::SynackRetrans {
            retrans,
            since_first_us,
        } => {
            raw.kind = abi::KIND_SYNACK_RETRANS;
            raw.oldstate = TcpState::Listen.to_kernel();
            raw.retrans = retrans;
            raw.synack_age_us = since_first_us;
        }
        Detail::Retrans {
            state,
            total_retrans,
        } => {
            raw.kind = abi::KIND_RETRANS;
            raw.oldstate = state.to_kernel();
            raw.retrans = total_retrans;
        }
        Detail::SendReset { state, reason } => {
            raw.kind = abi::KIND_SEND_RESET;
            match state {
                Some(st) => raw.oldstate = st.to_kernel(),
                None => raw.flags |= abi::F_NO_SOCKET,
            }
            if let Some(r) = reason {
                raw.flags |= abi::F_REASON;
                raw.reason = r;
            }
        }
        Detail::RecvReset { state } => {
            raw.kind = abi::KIND_RECV_RESET;
            raw.oldstate = state.to_kernel();
        }
    }
    raw
}

fn put_ip(dst: &mut [u8; 16], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => *dst = v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
    }

    fn base(detail: Detail) -> Event {
        Event {
            ts_ns: 123_456_789,
            sock_id: 0xdead_beef,
            id_is_addr: false,
            caught: false,
            netns: 4_026_531_840,
            family: Family::Ipv4,
            local: v4([127, 0, 0, 1], 40312),
            remote: v4([127, 0, 0, 2], 8080),
            task: None,
            detail,
        }
    }

    #[test]
    fn every_kind_round_trips_through_bytes() {
        let events = [
            Event {
                task: Some(Task {
                    pid: 4242,
                    comm: "curl".into(),
                    cgroup_id: 77,
                }),
                ..base(Detail::State {
                    old: TcpState::Close,
                    new: TcpState::SynSent,
                    srtt_us: None,
                    total_retrans: None,
                })
            },
            base(Detail::State {
                old: TcpState::SynSent,
                new: TcpState::Established,
                srtt_us: Some(52),
                total_retrans: Some(0),
            }),
            base(Detail::SynackRetrans {
                retrans: 3,
                since_first_us: 7_000_123,
            }),
            base(Detail::Retrans {
                state: TcpState::Established,
                total_retrans: 9,
            }),
            base(Detail::SendReset {
                state: Some(TcpState::Close),
                reason: Some(11),
            }),
            base(Detail::SendReset {
                state: None,
                reason: Some(1),
            }),
            base(Detail::SendReset {
                state: Some(TcpState::Established),
                reason: None,
            }),
            base(Detail::RecvReset {
                state: TcpState::SynSent,
            }),
            Event {
                family: Family::Ipv6,
                local: "[::1]:8080".parse().unwrap(),
                remote: "[fe80::1]:5000".parse().unwrap(),
                id_is_addr: true,
                caught: true,
                ..base(Detail::RecvReset {
                    state: TcpState::Established,
                })
            },
        ];
        for ev in events {
            let bytes = encode(&ev).to_bytes();
            assert_eq!(decode(&bytes), Ok(ev));
        }
    }

    #[test]
    fn decodes_kernel_bytes_field_by_field() {
        let mut raw = abi::RawEvent {
            ts_ns: 5,
            sock_id: 9,
            kind: abi::KIND_STATE,
            family: 2,
            oldstate: 8,
            newstate: 9,
            sport: 8080,
            dport: 51000,
            netns: 7,
            ..abi::RawEvent::default()
        };
        raw.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let ev = decode(&raw.to_bytes()).unwrap();
        assert_eq!(ev.local, v4([10, 0, 0, 1], 8080));
        assert_eq!(ev.remote, v4([10, 0, 0, 2], 51000));
        assert_eq!(ev.netns, 7);
        assert_eq!(
            ev.detail,
            Detail::State {
                old: TcpState::CloseWait,
                new: TcpState::LastAck,
                srtt_us: None,
                total_retrans: None
            }
        );
        assert_eq!(ev.task, None);
        assert_eq!(ev.kind(), Kind::State);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let good = encode(&base(Detail::RecvReset {
            state: TcpState::SynSent,
        }));
        assert_eq!(decode(&good.to_bytes()[..50]), Err(DecodeError::Short(50)));
        let mut bad_kind = good;
        bad_kind.kind = 200;
        assert_eq!(decode(&bad_kind.to_bytes()), Err(DecodeError::Kind(200)));
        let mut bad_family = good;
        bad_family.family = 1;
        assert_eq!(decode(&bad_family.to_bytes()), Err(DecodeError::Family(1)));
    }

    #[test]
    fn comm_stops_at_nul_and_tolerates_bad_utf8() {
        assert_eq!(
            Comm::from_kernel(*b"nginx\0garbage\0\0\0").to_str(),
            "nginx"
        );
        assert_eq!(
            Comm::from_kernel(*b"0123456789abcdef").to_str(),
            "0123456789abcdef"
        );
        assert_eq!(
            Comm::from_kernel(*b"a\xffb\0............").to_str(),
            "a\u{fffd}b"
        );
    }
}
