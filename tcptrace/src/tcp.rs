//! TCP domain vocabulary: the kernel's socket states (include/net/tcp_states.h)
//! and address families, with the names operators know from `ss` and `netstat`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TCP socket state, numbered as in include/net/tcp_states.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    /// A state this build does not know (a newer kernel): kept, printed as its number.
    Unknown(u8),
}

impl TcpState {
    /// Every known state, in kernel order.
    pub const ALL: [TcpState; 13] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
        Self::BoundInactive,
    ];

    pub fn from_kernel(value: u8) -> Self {
        match value {
            1..=13 => Self::ALL[usize::from(value) - 1],
            other => Self::Unknown(other),
        }
    }

    pub fn to_kernel(self) -> u8 {
        match self {
            Self::Unknown(v) => v,
            // ALL is in kernel order starting at 1.
            known => Self::ALL
                .iter()
                .position(|s| *s == known)
                .map_or(0, |i| i as u8 + 1),
        }
    }

    /// The name `ss` and the tracepoint's own output use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(v) => write!(f, "STATE_{v}"),
            known => f.pad(known.name()),
        }
    }
}

impl Serialize for TcpState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TcpState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(n) = s.strip_prefix("STATE_") {
            return n
                .parse()
                .map(Self::Unknown)
                .map_err(serde::de::Error::custom);
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `CLOSE_WAIT`, `close-wait`, `closewait`, or the kernel's number.
impl FromStr for TcpState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if let Ok(n) = norm.parse::<u8>() {
            return Ok(Self::from_kernel(n));
        }
        Self::ALL
            .into_iter()
            .find(|st| st.name().replace('_', "") == norm)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown TCP state '{s}' (one of {})", names.join(", "))
            })
    }
}

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;

    pub fn from_kernel(af: u16) -> Option<Self> {
        match af {
            Self::AF_INET => Some(Self::Ipv4),
            Self::AF_INET6 => Some(Self::Ipv6),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_round_trip() {
        assert_eq!(TcpState::from_kernel(1), TcpState::Established);
        assert_eq!(TcpState::from_kernel(7), TcpState::Close);
        assert_eq!(TcpState::from_kernel(8), TcpState::CloseWait);
        assert_eq!(TcpState::from_kernel(10), TcpState::Listen);
        assert_eq!(TcpState::from_kernel(99), TcpState::Unknown(99));
        for st in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(st.to_kernel()), st);
        }
    }

    #[test]
    fn names_and_parsing() {
        assert_eq!(TcpState::CloseWait.to_string(), "CLOSE_WAIT");
        assert_eq!(TcpState::Unknown(42).to_string(), "STATE_42");
        assert_eq!("close-wait".parse::<TcpState>(), Ok(TcpState::CloseWait));
        assert_eq!("FIN_WAIT2".parse::<TcpState>(), Ok(TcpState::FinWait2));
        assert_eq!("syn_recv".parse::<TcpState>(), Ok(TcpState::SynRecv));
        assert_eq!("2".parse::<TcpState>(), Ok(TcpState::SynSent));
        assert!(
            "bogus"
                .parse::<TcpState>()
                .unwrap_err()
                .contains("unknown TCP state 'bogus'")
        );
    }
}
