//! Per-port reports: what the daemon writes every interval (and what
//! `tcptrace report` prints from a recording), as text for people or as one
//! JSON object per line for machines.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::snapshot::{PortSnapshot, Snapshot};
use crate::tcp::TcpState;
use crate::view::human::{age, duration_s, duration_us, rate};
use crate::view::{findings_text, port_label};

/// One report: the snapshot of an interval and how long the interval was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `"interval"` for periodic reports, `"final"` for the one written on exit.
    pub report: String,
    pub interval_s: f64,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// Output format of reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Text,
    Json,
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string(report).unwrap_or_default(),
        Format::Text => text(report),
    }
}

/// The states reported, in the order a connection passes them.
const STATES: [TcpState; 9] = [
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Closing,
];

/// The text form: a header line, the findings of the interval, then a block
/// per port.
pub fn text(r: &Report) -> String {
    let s = &r.snapshot;
    let per_s = if r.interval_s > 0.0 {
        s.events.total as f64 / r.interval_s
    } else {
        0.0
    };
    let mut out = format!(
        "== tcptrace {} report {}  interval {}  events {} ({}/s)  lost {}  untracked {}  folded ports {} ==\n",
        r.report,
        s.time,
        duration_s(r.interval_s),
        s.events.total,
        rate(per_s),
        s.events.lost,
        s.events.untracked,
        s.events.folded_ports,
    );
    if s.events.lost > 0 {
        let advice = if s.events.lost_skipped >= s.events.lost {
            "skipped by the kernel's recursion guard"
        } else {
            "raise --ring-size"
        };
        let _ = writeln!(
            out,
            "!! {} events lost: numbers below are incomplete ({advice})",
            s.events.lost
        );
    }
    out.push_str(&findings_text(&s.findings.iter().collect::<Vec<_>>()));
    if s.ports.is_empty() {
        out.push_str("no TCP activity\n");
    }
    for p in &s.ports {
        port_block(&mut out, p);
    }
    out
}

fn port_block(out: &mut String, p: &PortSnapshot) {
    let mut head = format!(":{} {}", port_label(p.port), p.direction.name());
    if p.listening {
        head.push_str("  listening");
    }
    if let Some(q) = p.accept_queue {
        let _ = write!(head, "  accept queue {}/{}", q.len, q.max);
    }
    let _ = writeln!(out, "{head}");
    let mut line = format!("  transitions {}", p.transitions);
    if p.synack_retrans > 0 || p.listening {
        let _ = write!(line, "  SYN-ACK retransmits {}", p.synack_retrans);
    }
    let hs = &p.handshakes;
    if hs.completed > 0 || hs.failed > 0 {
        let _ = write!(
            line,
            "  handshakes {} completed, {} failed",
            hs.completed, hs.failed
        );
        if let Some(t) = &hs.time {
            let _ = write!(
                line,
                " (p50 {}, p99 {}, max {})",
                duration_us(t.p50_us),
                duration_us(t.p99_us),
                duration_us(t.max_us)
            );
        }
    }
    if p.retransmits > 0 {
        let _ = write!(line, "  retransmits {}", p.retransmits);
    }
    let _ = writeln!(out, "{line}");
    state_rows(out, p);
    reset_lines(out, p);
    for o in p.oldest.iter().take(3) {
        let owner = match (&o.comm, o.pid) {
            (Some(c), Some(pid)) => format!("  {c}[{pid}]"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  oldest: {} {} -> {} for {}{owner}",
            o.state,
            o.local,
            o.remote,
            age(o.age_s, o.exact)
        );
    }
}

/// The per-state table of a port: counts now, oldest, entries, dwell, exits.
fn state_rows(out: &mut String, p: &PortSnapshot) {
    let rows: Vec<_> = STATES
        .iter()
        .filter_map(|st| p.states.get(st).map(|v| (st, v)))
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "  {:<12} {:>6} {:>8} {:>8}  {:>7} {:>7} {:>7} {:>7} {:>8}  exits",
            "state", "now", "oldest", "entered", "p50", "p90", "p99", "max", "unknown"
        );
    }
    for (st, v) in rows {
        let oldest = v
            .oldest_s
            .map_or_else(|| "-".to_string(), |s| age(s, v.oldest_exact));
        let (p50, p90, p99, max) = v.dwell.as_ref().map_or_else(
            || ("-".into(), "-".into(), "-".into(), "-".into()),
            |d| {
                (
                    duration_us(d.p50_us),
                    duration_us(d.p90_us),
                    duration_us(d.p99_us),
                    duration_us(d.max_us),
                )
            },
        );
        let exits: Vec<String> = v.exits.iter().map(|(to, n)| format!("{to} {n}")).collect();
        let row = format!(
            "  {:<12} {:>6} {:>8} {:>8}  {p50:>7} {p90:>7} {p99:>7} {max:>7} {:>8}  {}",
            st.name(),
            v.now,
            oldest,
            v.entered,
            v.dwell_unknown,
            exits.join(", ")
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
}

/// Resets sent by cause and received by the state they hit.
fn reset_lines(out: &mut String, p: &PortSnapshot) {
    if !p.resets_sent.is_empty() {
        let causes: Vec<String> = p
            .resets_sent
            .iter()
            .map(|r| {
                let before = r
                    .state_before
                    .map_or_else(|| "no socket".to_string(), |b| format!("in {b}"));
                format!("{} {} ({before})", r.reason, r.count)
            })
            .collect();
        let _ = writeln!(out, "  resets sent: {}", causes.join(", "));
    }
    if !p.resets_received.is_empty() {
        let hit: Vec<String> = p
            .resets_received
            .iter()
            .map(|(st, n)| format!("in {st} {n}"))
            .collect();
        let _ = writeln!(out, "  resets received: {}", hit.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::findings::{FindingsConfig, evaluate};
    use crate::snapshot::{
        AcceptQueue, Direction, Dwell, EventCounts, Handshakes, ResetCount, StateSnapshot,
        StuckSocket,
    };

    fn report() -> Report {
        let cw = StateSnapshot {
            now: 312,
            oldest_s: Some(2460.0),
            oldest_exact: false,
            entered: 50,
            exits: BTreeMap::from([(TcpState::LastAck, 48)]),
            dwell: Some(Dwell {
                count: 48,
                p50_us: 300_000,
                p90_us: 310_000,
                p99_us: 350_000,
                max_us: 351_000,
                ..Dwell::default()
            }),
            dwell_unknown: 2,
        };
        let port = PortSnapshot {
            port: Some(8080),
            direction: Direction::In,
            listening: true,
            accept_queue: Some(AcceptQueue { len: 0, max: 128 }),
            transitions: 250,
            states: BTreeMap::from([(TcpState::CloseWait, cw)]),
            synack_retrans: 3,
            handshakes: Handshakes {
                completed: 50,
                failed: 1,
                time: None,
            },
            resets_sent: vec![ResetCount {
                reason: "TCP_ABORT_ON_CLOSE".into(),
                state_before: Some(TcpState::Established),
                count: 4,
            }],
            resets_received: BTreeMap::from([(TcpState::Established, 2)]),
            resets_received_long_established: 0,
            retransmits: 0,
            oldest: vec![StuckSocket {
                state: TcpState::CloseWait,
                local: "10.0.0.1:8080".into(),
                remote: "10.0.0.2:40000".into(),
                netns: 1,
                age_s: 2460.0,
                exact: false,
                pid: Some(31),
                comm: Some("server".into()),
            }],
        };
        let mut report = Report {
            report: "interval".into(),
            interval_s: 60.0,
            snapshot: Snapshot {
                time: "2026-11-23T19:00:00Z".into(),
                uptime_s: 600.0,
                events: EventCounts {
                    total: 1200,
                    lost: 5,
                    ..EventCounts::default()
                },
                sockets_tracked: 400,
                ports: vec![port],
                findings: Vec::new(),
            },
        };
        // As `Session::end_interval` fills them: over the interval.
        report.snapshot.findings = evaluate(
            &report.snapshot,
            report.interval_s,
            &FindingsConfig::default(),
        );
        report
    }

    #[test]
    fn lost_events_that_no_ring_size_would_save_are_named_as_such() {
        let mut r = report();
        r.snapshot.events.lost_skipped = 5;
        let t = text(&r);
        assert_eq!(
            t.lines().nth(1),
            Some(
                "!! 5 events lost: numbers below are incomplete (skipped by the kernel's recursion guard)"
            )
        );
    }

    #[test]
    fn text_report_has_every_number() {
        let t = text(&report());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "== tcptrace interval report 2026-11-23T19:00:00Z  interval 1m00s  events 1200 (20/s)  lost 5  untracked 0  folded ports 0 =="
        );
        assert_eq!(
            lines[1],
            "!! 5 events lost: numbers below are incomplete (raise --ring-size)"
        );
        // The findings of the interval come first: 312 in CLOSE_WAIT and 48
        // closed, then the lost events.
        assert_eq!(
            lines[2..9],
            [
                "findings: 2",
                "  CRIT :8080 in close_wait_leak: 312 in CLOSE_WAIT now, oldest ≥41m; 48 CLOSE_WAIT -> LAST_ACK \
                 in 1m00s (p99 350ms); owner server[31]",
                "       cause: server[31] does not close() after the peer's FIN",
                "       next:  fix its read() == 0 and error paths that skip close(); keepalive does not fix this",
                "  WARN all ports lost_events: 5 events lost, 1200 read (0.41% lost)",
                "       cause: the ring buffer overflowed: every number here misses those events",
                "       next:  raise --ring-size (default 4M), or trace fewer ports (--port filters in the kernel)",
            ]
        );
        let lines = &lines[7..];
        assert_eq!(lines[2], ":8080 in  listening  accept queue 0/128");
        assert_eq!(
            lines[3],
            "  transitions 250  SYN-ACK retransmits 3  handshakes 50 completed, 1 failed"
        );
        assert!(
            lines[5].starts_with("  CLOSE_WAIT      312     ≥41m       50"),
            "{}",
            lines[5]
        );
        assert!(
            lines[5].contains("300ms   310ms   350ms   351ms        2  LAST_ACK 48"),
            "{}",
            lines[5]
        );
        assert_eq!(
            lines[6],
            "  resets sent: TCP_ABORT_ON_CLOSE 4 (in ESTABLISHED)"
        );
        assert_eq!(lines[7], "  resets received: in ESTABLISHED 2");
        assert_eq!(
            lines[8],
            "  oldest: CLOSE_WAIT 10.0.0.1:8080 -> 10.0.0.2:40000 for ≥41m  server[31]"
        );
    }

    #[test]
    fn json_report_is_one_line_and_round_trips() {
        let r = report();
        let line = render(&r, Format::Json);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["report"], "interval");
        assert_eq!(v["interval_s"], 60.0);
        assert_eq!(v["events"]["lost"], 5);
        assert_eq!(v["ports"][0]["states"]["CLOSE_WAIT"]["now"], 312);
        let back: Report = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn an_idle_interval_says_so() {
        let mut r = report();
        r.snapshot.ports.clear();
        r.snapshot.events = EventCounts::default();
        r.snapshot.findings.clear();
        assert!(text(&r).ends_with("\nfindings: none\nno TCP activity\n"));
    }
}
