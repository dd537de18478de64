//! Renders events for `tcptrace events`: one aligned text line, or one JSON
//! object per line for jq.

use std::fmt::Write as _;

use serde::Serialize;

use crate::clock::Clock;
use crate::event::{Detail, Event, Kind};
use crate::reasons::ResetReasons;
use crate::tcp::{Family, TcpState};
use crate::track::{Note, Origin};

/// The header matching [`text_line`].
pub const TEXT_HEADER: &str = "TIME            PID     COMM            LOCAL                  REMOTE                 EVENT                        MS        DETAIL";

/// Milliseconds with microsecond precision.
pub fn ms(ns: u64) -> String {
    format!("{}.{:03}", ns / 1_000_000, (ns / 1_000) % 1_000)
}

/// One text line. Times are local wall-clock time of day.
pub fn text_line(ev: &Event, note: &Note, clock: Clock, reasons: &ResetReasons) -> String {
    let wall = clock
        .wall(ev.ts_ns)
        .to_zoned_datetime(jiff::tz::TimeZone::system());
    let (pid, comm) = match ev.task.as_ref().or(note.owner.as_ref()) {
        Some(t) => (t.pid.to_string(), t.comm.to_str()),
        None => ("-".to_string(), "-".into()),
    };
    let mut line = format!(
        "{} {pid:<7} {comm:<15} {:<22} {:<22} ",
        wall.strftime("%H:%M:%S%.6f"),
        ev.local.to_string(),
        ev.remote.to_string()
    );
    let dwell = |d: Option<u64>| match d {
        _ if note.new_life => "-".to_string(),
        Some(ns) => ms(ns),
        None => "?".to_string(),
    };
    let _ = match &ev.detail {
        Detail::State {
            old,
            new,
            srtt_us,
            total_retrans,
        } => {
            let what = format!("{old} -> {new}");
            let mut detail = String::new();
            if let Some(rtt) = srtt_us {
                let _ = write!(detail, "rtt={}", ms(u64::from(*rtt) * 1_000));
            }
            if let Some(n) = total_retrans.filter(|n| *n > 0) {
                let _ = write!(detail, " retrans={n}");
            }
            write!(
                line,
                "{what:<28} {:<9} {}",
                dwell(note.dwell_ns),
                detail.trim_start()
            )
        }
        Detail::SynackRetrans {
            retrans,
            since_first_us,
        } => write!(
            line,
            "{:<28} {:<9} retrans={retrans} since_first_synack={}",
            "SYN-ACK retransmit",
            "-",
            ms(since_first_us.saturating_mul(1_000))
        ),
        Detail::Retrans {
            state,
            total_retrans,
        } => write!(
            line,
            "{:<28} {:<9} state={state} total_retrans={total_retrans}",
            "retransmit", "-"
        ),
        Detail::SendReset { state, reason } => write!(
            line,
            "{:<28} {:<9} reason={} before={}",
            "RST sent",
            "-",
            reason.map_or_else(|| "?".into(), |r| reasons.name(r)),
            match (state, note.state_before) {
                (None, _) => "no-socket".to_string(),
                (_, Some(b)) => b.to_string(),
                (Some(_), None) => "?".to_string(),
            }
        ),
        Detail::RecvReset { state } => {
            write!(line, "{:<28} {:<9} in={state}", "RST received", "-")
        }
    };
    line.truncate(line.trim_end().len());
    line
}

/// The JSON form of an event.
#[derive(Debug, Serialize)]
pub struct EventJson {
    pub time: String,
    pub ts_ns: u64,
    pub kind: Kind,
    pub sock: u64,
    pub netns: u32,
    pub family: Family,
    pub local: String,
    pub remote: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<TcpState>,
    /// State events: microseconds in the old state; null when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dwell_us: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtt_us: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrans: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_first_synack_us: Option<u64>,
    /// Retransmits and resets: the state at the hook (null: no socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Option<TcpState>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_before: Option<Option<TcpState>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub fn json(ev: &Event, note: &Note, clock: Clock, reasons: &ResetReasons) -> EventJson {
    let owner = ev.task.as_ref().or(note.owner.as_ref());
    let mut j = EventJson {
        time: clock.wall(ev.ts_ns).to_string(),
        ts_ns: ev.ts_ns,
        kind: ev.kind(),
        sock: ev.sock_id,
        netns: ev.netns,
        family: ev.family,
        local: ev.local.to_string(),
        remote: ev.remote.to_string(),
        pid: owner.map(|t| t.pid),
        comm: owner.map(|t| t.comm.to_string()),
        cgroup_id: owner.map(|t| t.cgroup_id),
        origin: note.origin,
        old: None,
        new: None,
        dwell_us: None,
        srtt_us: None,
        retrans: None,
        since_first_synack_us: None,
        state: None,
        state_before: None,
        reason: None,
    };
    match &ev.detail {
        Detail::State {
            old,
            new,
            srtt_us,
            total_retrans,
        } => {
            j.old = Some(*old);
            j.new = Some(*new);
            if !note.new_life {
                j.dwell_us = Some(note.dwell_ns.map(|ns| ns / 1_000));
            }
            j.srtt_us = *srtt_us;
            j.retrans = *total_retrans;
        }
        Detail::SynackRetrans {
            retrans,
            since_first_us,
        } => {
            j.retrans = Some(*retrans);
            j.since_first_synack_us = Some(*since_first_us);
        }
        Detail::Retrans {
            state,
            total_retrans,
        } => {
            j.state = Some(Some(*state));
            j.retrans = Some(*total_retrans);
        }
        Detail::SendReset { state, reason } => {
            j.state = Some(*state);
            j.state_before = Some(note.state_before);
            j.reason = reason.map(|r| reasons.name(r).into_owned());
        }
        Detail::RecvReset { state } => j.state = Some(Some(*state)),
    }
    j
}

/// One JSON line.
pub fn json_line(ev: &Event, note: &Note, clock: Clock, reasons: &ResetReasons) -> String {
    serde_json::to_string(&json(ev, note, clock, reasons)).unwrap_or_default()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::event::Task;

    fn ev(detail: Detail) -> Event {
        Event {
            ts_ns: 2_000_000,
            sock_id: 77,
            id_is_addr: false,
            caught: false,
            netns: 4_026_531_840,
            family: Family::Ipv4,
            local: "127.0.0.1:40312".parse().unwrap(),
            remote: "127.0.0.1:8080".parse().unwrap(),
            task: None,
            detail,
        }
    }

    fn clock() -> Clock {
        Clock::with_offset(1_700_000_000_000_000_000)
    }

    fn reasons() -> ResetReasons {
        ResetReasons::from_pairs([(1, "NO_SOCKET"), (11, "TCP_ABORT_ON_CLOSE")])
    }

    #[test]
    fn ms_has_microsecond_precision() {
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(1_234_567), "1.234");
        assert_eq!(ms(300_012_999), "300.012");
    }

    #[test]
    fn state_event_text_and_json() {
        let e = ev(Detail::State {
            old: TcpState::CloseWait,
            new: TcpState::LastAck,
            srtt_us: None,
            total_retrans: None,
        });
        let owner = Task {
            pid: 31,
            comm: "server".into(),
            cgroup_id: 4,
        };
        let note = Note {
            dwell_ns: Some(300_250_000),
            owner: Some(owner),
            origin: Some(Origin::Passive),
            state_before: None,
            new_life: false,
            repeat: false,
        };
        let line = text_line(&e, &note, clock(), &reasons());
        assert!(
            line.contains("31      server          127.0.0.1:40312"),
            "{line}"
        );
        assert!(line.contains("CLOSE_WAIT -> LAST_ACK"), "{line}");
        assert!(line.ends_with("300.250"), "{line}");
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&e, &note, clock(), &reasons())).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.002Z");
        assert_eq!(v["kind"], "state");
        assert_eq!(v["old"], "CLOSE_WAIT");
        assert_eq!(v["new"], "LAST_ACK");
        assert_eq!(v["dwell_us"], 300_250);
        assert_eq!(v["pid"], 31);
        assert_eq!(v["comm"], "server");
        assert_eq!(v["origin"], "passive");
        assert_eq!(v["local"], "127.0.0.1:40312");
    }

    #[test]
    fn unknown_dwell_is_null_never_zero() {
        let e = ev(Detail::State {
            old: TcpState::Established,
            new: TcpState::FinWait1,
            srtt_us: None,
            total_retrans: None,
        });
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&e, &Note::default(), clock(), &reasons())).unwrap();
        assert!(v["dwell_us"].is_null() && v.get("dwell_us").is_some());
        let line = text_line(&e, &Note::default(), clock(), &reasons());
        assert!(line.contains("ESTABLISHED -> FIN_WAIT1     ?"), "{line}");

        let connect = ev(Detail::State {
            old: TcpState::Close,
            new: TcpState::SynSent,
            srtt_us: None,
            total_retrans: None,
        });
        let fresh = Note {
            new_life: true,
            ..Note::default()
        };
        let line = text_line(&connect, &fresh, clock(), &reasons());
        assert!(line.ends_with("CLOSE -> SYN_SENT            -"), "{line}");
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&connect, &fresh, clock(), &reasons())).unwrap();
        assert!(v.get("dwell_us").is_none());
    }

    #[test]
    fn resets_show_reason_names_and_state_before() {
        let e = ev(Detail::SendReset {
            state: Some(TcpState::Close),
            reason: Some(11),
        });
        let note = Note {
            state_before: Some(TcpState::Established),
            ..Note::default()
        };
        let line = text_line(&e, &note, clock(), &reasons());
        assert!(
            line.ends_with("reason=TCP_ABORT_ON_CLOSE before=ESTABLISHED"),
            "{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&e, &note, clock(), &reasons())).unwrap();
        assert_eq!(v["reason"], "TCP_ABORT_ON_CLOSE");
        assert_eq!(v["state_before"], "ESTABLISHED");
        assert_eq!(v["state"], "CLOSE");

        let none = ev(Detail::SendReset {
            state: None,
            reason: Some(1),
        });
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&none, &Note::default(), clock(), &reasons())).unwrap();
        assert_eq!(v["reason"], "NO_SOCKET");
        assert!(v["state"].is_null());
        let line = text_line(&none, &Note::default(), clock(), &reasons());
        assert!(
            line.ends_with("reason=NO_SOCKET before=no-socket"),
            "{line}"
        );

        let unknown = ev(Detail::SendReset {
            state: None,
            reason: Some(99),
        });
        let line = text_line(&unknown, &Note::default(), clock(), &reasons());
        assert!(line.contains("reason=99"), "{line}");
    }

    #[test]
    fn retransmits_and_received_resets() {
        let e = ev(Detail::SynackRetrans {
            retrans: 2,
            since_first_us: 3_000_500,
        });
        let line = text_line(&e, &Note::default(), clock(), &reasons());
        assert!(
            line.ends_with("retrans=2 since_first_synack=3000.500"),
            "{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&e, &Note::default(), clock(), &reasons())).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["retrans"].as_u64()),
            (Some("synack_retrans"), Some(2))
        );
        assert_eq!(v["since_first_synack_us"], 3_000_500);

        let e = ev(Detail::RecvReset {
            state: TcpState::SynSent,
        });
        assert!(text_line(&e, &Note::default(), clock(), &reasons()).ends_with("in=SYN_SENT"));
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&e, &Note::default(), clock(), &reasons())).unwrap();
        assert_eq!(v["state"], "SYN_SENT");
    }
}
