//! Unit tests of the exposition: exact sample lines for a hand-built snapshot.

use std::collections::BTreeMap;

use super::*;
use crate::snapshot::{AcceptQueue, Bucket, EventCounts, Handshakes, ResetCount, StateSnapshot};
use crate::tcp::TcpState;

fn row(port: Option<u16>, direction: Direction) -> PortSnapshot {
    PortSnapshot::empty(port, direction)
}

fn dwell(count: u64, mean_us: f64, buckets: &[(u64, u64)]) -> Dwell {
    Dwell {
        count,
        mean_us,
        buckets: buckets
            .iter()
            .map(|&(le_us, count)| Bucket { le_us, count })
            .collect(),
        ..Dwell::default()
    }
}

fn reset(reason: &str, state_before: Option<TcpState>, count: u64) -> ResetCount {
    ResetCount {
        reason: reason.to_string(),
        state_before,
        count,
    }
}

/// Port 8080 both listens ("in") and is connected to ("out"); port 9 refuses;
/// the folded "other" row has a little of everything.
fn sample() -> Snapshot {
    let mut web = row(Some(8080), Direction::In);
    web.listening = true;
    web.accept_queue = Some(AcceptQueue { len: 3, max: 128 });
    web.synack_retrans = 4;
    web.handshakes = Handshakes {
        completed: 7,
        failed: 1,
        time: Some(dwell(2, 50.0, &[(64, 2)])),
    };
    web.retransmits = 6;
    web.resets_received.insert(TcpState::Established, 2);
    web.states.insert(
        TcpState::Established,
        StateSnapshot {
            now: 2,
            oldest_s: Some(1.5),
            entered: 8,
            exits: BTreeMap::from([(TcpState::FinWait1, 1), (TcpState::CloseWait, 5)]),
            dwell: Some(dwell(4, 100.0, &[(16, 1), (64, 2), (256, 1)])),
            ..StateSnapshot::default()
        },
    );
    web.states.insert(
        TcpState::CloseWait,
        StateSnapshot {
            // A stay longer than the last finite bound (4^18 µs ≈ 19 h).
            dwell: Some(dwell(3, 1e9, &[(1, 1), (262_144, 1), (1 << 36, 1)])),
            ..StateSnapshot::default()
        },
    );
    let mut web_out = row(Some(8080), Direction::Out);
    web_out.states.insert(
        TcpState::Established,
        StateSnapshot {
            now: 1,
            oldest_s: Some(0.25),
            ..StateSnapshot::default()
        },
    );
    let mut refused = row(Some(9), Direction::In);
    refused.resets_sent = vec![
        reset("NO_SOCKET", None, 12),
        reset("NO_SOCKET", Some(TcpState::SynRecv), 8),
        reset("TCP_ABORT_ON_CLOSE", Some(TcpState::Established), 3),
    ];
    let mut other = row(None, Direction::In);
    other.retransmits = 1;
    other.accept_queue = Some(AcceptQueue { len: 0, max: 4096 });
    other.states.insert(
        TcpState::Unknown(42),
        StateSnapshot {
            now: 1,
            ..StateSnapshot::default()
        },
    );
    Snapshot {
        time: "2026-01-01T00:00:00Z".to_string(),
        uptime_s: 10.0,
        events: EventCounts {
            total: 30,
            by_kind: BTreeMap::from([("state".to_string(), 25), ("send_reset".to_string(), 5)]),
            folded_ports: 17,
            ..EventCounts::default()
        },
        sockets_tracked: 4,
        ports: vec![refused, web, web_out, other],
        findings: Vec::new(),
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line {line:?} in:\n{text}"
    );
}

#[test]
fn counters_have_exact_lines() {
    let text = encode(&sample());
    has(&text, "# TYPE tcptrace_resets_sent_total counter");
    // Summed over the state before the reset.
    has(
        &text,
        r#"tcptrace_resets_sent_total{port="9",direction="in",reason="NO_SOCKET"} 20"#,
    );
    has(
        &text,
        r#"tcptrace_resets_sent_total{port="9",direction="in",reason="TCP_ABORT_ON_CLOSE"} 3"#,
    );
    has(
        &text,
        r#"tcptrace_transitions_total{port="8080",direction="in",from="ESTABLISHED",to="CLOSE_WAIT"} 5"#,
    );
    has(
        &text,
        r#"tcptrace_resets_received_total{port="8080",direction="in",state="ESTABLISHED"} 2"#,
    );
    has(&text, r#"tcptrace_synack_retransmits_total{port="8080"} 4"#);
    has(
        &text,
        r#"tcptrace_handshakes_completed_total{port="8080"} 7"#,
    );
    has(&text, r#"tcptrace_handshakes_failed_total{port="8080"} 1"#);
    has(
        &text,
        r#"tcptrace_retransmits_total{port="other",direction="in"} 1"#,
    );
    has(&text, r#"tcptrace_events_total{kind="state"} 25"#);
    // Kinds not seen yet are there, at 0.
    has(&text, r#"tcptrace_events_total{kind="recv_reset"} 0"#);
    has(&text, "tcptrace_events_lost_total 0");
    has(&text, "tcptrace_events_undecodable_total 0");
    has(&text, "tcptrace_sockets_untracked_total 0");
    assert!(!text.contains("# EOF"));
}

#[test]
fn gauges_have_exact_lines() {
    let text = encode(&sample());
    has(&text, "# TYPE tcptrace_sockets gauge");
    has(
        &text,
        r#"tcptrace_sockets{port="8080",direction="in",state="ESTABLISHED"} 2"#,
    );
    // The same port's "out" row is its own series.
    has(
        &text,
        r#"tcptrace_sockets{port="8080",direction="out",state="ESTABLISHED"} 1"#,
    );
    has(
        &text,
        r#"tcptrace_oldest_socket_age_seconds{port="8080",direction="out",state="ESTABLISHED"} 0.25"#,
    );
    has(
        &text,
        r#"tcptrace_sockets{port="other",direction="in",state="STATE_42"} 1"#,
    );
    has(&text, "tcptrace_ports_folded 17");
    has(&text, r#"tcptrace_accept_queue_length{port="8080"} 3"#);
    has(&text, r#"tcptrace_accept_queue_max{port="8080"} 128"#);
    has(&text, r#"tcptrace_accept_queue_max{port="other"} 4096"#);
    // No age without sockets.
    assert!(!text.contains(r#"tcptrace_oldest_socket_age_seconds{port="other""#));
}

/// The fixed bucket list, cumulative, with +Inf equal to `_count`.
#[test]
fn histograms_use_fixed_cumulative_buckets() {
    let text = encode(&sample());
    has(&text, "# TYPE tcptrace_state_dwell_seconds histogram");
    let est = r#"port="8080",direction="in",state="ESTABLISHED""#;
    // prometheus-client puts `le` first.
    let series: Vec<&str> = lines(&text)
        .into_iter()
        .filter(|l| l.starts_with("tcptrace_state_dwell_seconds_bucket{le=") && l.contains(est))
        .collect();
    let les: Vec<&str> = series
        .iter()
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    let values: Vec<&str> = series
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        les,
        [
            "0.000001",
            "0.000004",
            "0.000016",
            "0.000064",
            "0.000256",
            "0.001024",
            "0.004096",
            "0.016384",
            "0.065536",
            "0.262144",
            "1.048576",
            "4.194304",
            "16.777216",
            "67.108864",
            "268.435456",
            "1073.741824",
            "4294.967296",
            "17179.869184",
            "+Inf"
        ]
    );
    assert_eq!(
        values,
        [
            "0", "0", "1", "3", "4", "4", "4", "4", "4", "4", "4", "4", "4", "4", "4", "4", "4",
            "4", "4"
        ]
    );
    has(
        &text,
        &format!("tcptrace_state_dwell_seconds_sum{{{est}}} 0.0004"),
    );
    has(
        &text,
        &format!("tcptrace_state_dwell_seconds_count{{{est}}} 4"),
    );

    // Beyond the last finite bound only +Inf counts it.
    let cw = r#"port="8080",direction="in",state="CLOSE_WAIT""#;
    has(
        &text,
        &format!(r#"tcptrace_state_dwell_seconds_bucket{{le="0.000001",{cw}}} 1"#),
    );
    has(
        &text,
        &format!(r#"tcptrace_state_dwell_seconds_bucket{{le="0.262144",{cw}}} 2"#),
    );
    has(
        &text,
        &format!(r#"tcptrace_state_dwell_seconds_bucket{{le="17179.869184",{cw}}} 2"#),
    );
    has(
        &text,
        &format!(r#"tcptrace_state_dwell_seconds_bucket{{le="+Inf",{cw}}} 3"#),
    );
    has(
        &text,
        &format!("tcptrace_state_dwell_seconds_sum{{{cw}}} 3000.0"),
    );

    has(
        &text,
        r#"tcptrace_handshake_seconds_bucket{le="0.000064",port="8080"} 2"#,
    );
    has(&text, r#"tcptrace_handshake_seconds_count{port="8080"} 2"#);
    has(
        &text,
        r#"tcptrace_handshake_seconds_sum{port="8080"} 0.0001"#,
    );
}

#[test]
fn port_only_series_come_from_inbound_rows_once() {
    let text = encode(&sample());
    for family in [
        "tcptrace_synack_retransmits_total",
        "tcptrace_handshakes_completed_total",
        "tcptrace_accept_queue_length",
    ] {
        let prefix = format!("{family}{{port=\"8080\"}}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with(&prefix)).count(),
            1,
            "{family}"
        );
    }
}

/// Every family has HELP and TYPE, and no sample prints an empty `{}`.
#[test]
fn every_family_is_described() {
    let text = encode(&sample());
    let all = lines(&text);
    for (i, line) in all.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                i > 0 && all[i - 1].starts_with(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            assert!(name.starts_with("tcptrace_"), "{name}");
        }
    }
    assert!(!text.contains("{}"), "{text}");
    assert_eq!(text.matches("# TYPE ").count(), 20);
}

/// One gauge of 1 per finding, labelled by rule, port, direction, severity.
#[test]
fn findings_are_gauges_of_one() {
    use crate::findings::{FindingsConfig, evaluate};
    let mut snap = sample();
    snap.events.lost = 3;
    snap.findings = evaluate(&snap, snap.uptime_s, &FindingsConfig::default());
    assert_eq!(snap.findings.len(), 2, "{:#?}", snap.findings);
    let text = encode(&snap);
    has(&text, "# TYPE tcptrace_findings gauge");
    // 12 resets for packets that matched no socket on a port nobody listens on.
    has(
        &text,
        r#"tcptrace_findings{rule="no_listener",port="9",direction="in",severity="warning"} 1"#,
    );
    // 3 lost of 33: host-wide, and critical (above 1 %).
    has(
        &text,
        r#"tcptrace_findings{rule="lost_events",port="all",direction="all",severity="critical"} 1"#,
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("tcptrace_findings{"))
            .count(),
        2
    );
    // Without findings, the family is there with no samples.
    let text = encode(&sample());
    has(&text, "# TYPE tcptrace_findings gauge");
    assert!(!text.contains("tcptrace_findings{"));
    let open = encode_openmetrics(&snap);
    has(
        &open,
        r#"tcptrace_findings{rule="no_listener",port="9",direction="in",severity="warning"} 1"#,
    );
}

#[test]
fn empty_snapshot_still_counts_lost_events() {
    let mut snap = Snapshot::default();
    snap.events.lost = 5;
    snap.events.lost_skipped = 2;
    let text = encode(&snap);
    has(&text, "tcptrace_events_lost_total 5");
    has(&text, "tcptrace_events_lost_skipped_total 2");
    has(&text, "# TYPE tcptrace_sockets gauge");
}

/// OpenMetrics names counter families without `_total`; samples are the same.
#[test]
fn openmetrics_variant() {
    let text = encode_openmetrics(&sample());
    has(&text, "# TYPE tcptrace_resets_sent counter");
    has(
        &text,
        "# HELP tcptrace_resets_sent Resets sent, by the kernel's reason.",
    );
    has(
        &text,
        r#"tcptrace_resets_sent_total{port="9",direction="in",reason="NO_SOCKET"} 20"#,
    );
    has(&text, "tcptrace_events_lost_total 0");
    has(&text, "# TYPE tcptrace_state_dwell_seconds histogram");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn format_follows_accept_header() {
    let prometheus_default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(
        Format::from_accept(Some(prometheus_default)),
        Format::OpenMetrics
    );
    assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::Prometheus.content_type(), PROMETHEUS_CONTENT_TYPE);
}
