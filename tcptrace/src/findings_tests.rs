//! Every rule with synthetic snapshots: ones that trigger it, and ones just
//! below its thresholds that must not.

use super::*;
use crate::snapshot::{AcceptQueue, Dwell, EventCounts, Handshakes, ResetCount, StuckSocket};
use crate::tcp::TcpState::SynRecv;

fn row(port: u16, direction: Direction) -> PortSnapshot {
    PortSnapshot::empty(Some(port), direction)
}

fn snap(ports: Vec<PortSnapshot>) -> Snapshot {
    Snapshot {
        time: "t".into(),
        uptime_s: 60.0,
        ports,
        ..Snapshot::default()
    }
}

/// A state with `now` sockets, the oldest `oldest_s` (exact).
fn now(now: u64, oldest_s: f64) -> StateSnapshot {
    StateSnapshot {
        now,
        oldest_s: (now > 0).then_some(oldest_s),
        oldest_exact: true,
        ..StateSnapshot::default()
    }
}

fn with_exits(mut st: StateSnapshot, exits: &[(TcpState, u64)]) -> StateSnapshot {
    st.exits = exits.iter().copied().collect();
    st
}

fn with_p99(mut st: StateSnapshot, p99_s: f64) -> StateSnapshot {
    st.dwell = Some(Dwell {
        count: 100,
        p99_us: std::time::Duration::from_secs_f64(p99_s).as_micros() as u64,
        ..Dwell::default()
    });
    st
}

fn one(p: PortSnapshot) -> Snapshot {
    snap(vec![p])
}

fn eval_over(s: &Snapshot, window_s: f64) -> Vec<Finding> {
    evaluate(s, window_s, &FindingsConfig::default())
}

fn eval(s: &Snapshot) -> Vec<Finding> {
    eval_over(s, 60.0)
}

/// The rules that fired.
fn fired(s: &Snapshot) -> Vec<Rule> {
    eval(s).iter().map(|f| f.rule).collect()
}

fn only(s: &Snapshot, rule: Rule) -> Finding {
    let all = eval(s);
    let mut hits = all.iter().filter(|f| f.rule == rule);
    let f = hits
        .next()
        .unwrap_or_else(|| panic!("no {rule} in {all:#?}"))
        .clone();
    assert!(hits.next().is_none(), "{rule} twice in {all:#?}");
    f
}

fn has(s: &Snapshot, rule: Rule) -> bool {
    fired(s).contains(&rule)
}

fn reset(reason: &str, state_before: Option<TcpState>, count: u64) -> ResetCount {
    ResetCount {
        reason: reason.into(),
        state_before,
        count,
    }
}

#[test]
fn names_are_the_serde_names_and_distinct() {
    let mut seen = std::collections::HashSet::new();
    for r in Rule::ALL {
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!("\"{}\"", r.name())
        );
        assert!(seen.insert(r.name()));
    }
    assert_eq!(
        serde_json::to_string(&Severity::Critical).unwrap(),
        "\"critical\""
    );
    assert!(Severity::Critical > Severity::Warning && Severity::Warning > Severity::Info);
}

#[test]
fn a_quiet_snapshot_has_no_findings() {
    let mut web = row(8080, Direction::In);
    web.listening = true;
    web.states.insert(Established, now(40, 900.0));
    web.states.insert(CloseWait, now(2, 0.01));
    web.handshakes.completed = 1000;
    web.synack_retrans = 3;
    assert!(eval(&one(web)).is_empty());
    assert!(eval(&Snapshot::default()).is_empty());
}

// ---------------------------------------------------------------------------
// 1. CLOSE_WAIT
// ---------------------------------------------------------------------------

#[test]
fn close_wait_piling_up_with_few_closes() {
    let cw = |n, closed| {
        let mut r = row(8080, Direction::In);
        r.states
            .insert(CloseWait, with_exits(now(n, 1.0), &[(LastAck, closed)]));
        one(r)
    };
    assert_eq!(
        only(&cw(10, 9), Rule::CloseWaitLeak).severity,
        Severity::Warning
    );
    assert!(!has(&cw(9, 0), Rule::CloseWaitLeak), "below the count");
    assert!(
        !has(&cw(10, 10), Rule::CloseWaitLeak),
        "the application closes as many as are stuck: a busy, healthy server"
    );
    assert_eq!(
        only(&cw(100, 0), Rule::CloseWaitLeak).severity,
        Severity::Critical
    );
    assert_eq!(
        only(&cw(99, 0), Rule::CloseWaitLeak).severity,
        Severity::Warning
    );
}

#[test]
fn close_wait_long_now_or_in_stays_that_ended() {
    let aged = |oldest_s| {
        let mut r = row(8080, Direction::In);
        r.states
            .insert(CloseWait, with_exits(now(1, oldest_s), &[(LastAck, 1000)]));
        one(r)
    };
    assert!(has(&aged(60.0), Rule::CloseWaitLeak));
    assert!(!has(&aged(59.9), Rule::CloseWaitLeak));
    let stays = |p99_s| {
        let mut r = row(8080, Direction::In);
        r.states.insert(
            CloseWait,
            with_p99(with_exits(now(0, 0.0), &[(LastAck, 1000)]), p99_s),
        );
        one(r)
    };
    assert!(has(&stays(60.0), Rule::CloseWaitLeak));
    assert!(!has(&stays(59.9), Rule::CloseWaitLeak));
}

/// The README's example: 12 sockets in CLOSE_WAIT on :8080 from before
/// tracing, three seconds in.
#[test]
fn close_wait_evidence_names_the_owner() {
    let mut web = row(8080, Direction::In);
    web.listening = true;
    web.states.insert(
        CloseWait,
        StateSnapshot {
            now: 12,
            oldest_s: Some(3.0),
            oldest_exact: false,
            ..StateSnapshot::default()
        },
    );
    web.oldest = vec![StuckSocket {
        state: CloseWait,
        local: "127.0.0.1:8080".into(),
        remote: "127.0.0.1:51590".into(),
        netns: 1,
        age_s: 3.0,
        exact: false,
        pid: Some(9995),
        comm: Some("python3".into()),
    }];
    let f = &eval_over(&one(web), 3.0)[0];
    assert_eq!(
        (f.rule, f.port, f.direction, f.severity),
        (
            Rule::CloseWaitLeak,
            Some(8080),
            Some(Direction::In),
            Severity::Warning
        )
    );
    assert_eq!(
        f.evidence,
        "12 in CLOSE_WAIT now, oldest ≥3.0s; 0 CLOSE_WAIT -> LAST_ACK in 3.0s; owner python3[9995]"
    );
    assert_eq!(
        f.cause,
        "python3[9995] does not close() after the peer's FIN"
    );
    assert_eq!(
        f.action,
        "fix its read() == 0 and error paths that skip close(); keepalive does not fix this"
    );
    assert_eq!(f.location(), ":8080 in");
}

// ---------------------------------------------------------------------------
// 2. FIN_WAIT2
// ---------------------------------------------------------------------------

#[test]
fn fin_wait2_many_or_long() {
    let fw2 = |n, left, oldest_s| {
        let mut r = row(443, Direction::Out);
        r.states
            .insert(FinWait2, with_exits(now(n, oldest_s), &[(Close, left)]));
        one(r)
    };
    assert!(has(&fw2(10, 9, 1.0), Rule::FinWait2Stuck));
    assert!(!has(&fw2(9, 0, 1.0), Rule::FinWait2Stuck));
    assert!(!has(&fw2(10, 10, 1.0), Rule::FinWait2Stuck));
    assert!(has(&fw2(1, 100, 30.0), Rule::FinWait2Stuck));
    assert!(!has(&fw2(1, 100, 29.9), Rule::FinWait2Stuck));
    let f = only(&fw2(1, 100, 30.0), Rule::FinWait2Stuck);
    assert!(
        f.cause.starts_with("the peer never sends its FIN"),
        "{}",
        f.cause
    );
    assert!(f.action.contains("tcp_fin_timeout"), "{}", f.action);
}

/// FIN_WAIT2 on one side, CLOSE_WAIT on the other, both on this host.
#[test]
fn fin_wait2_against_a_local_close_wait_points_at_it() {
    let mut server = row(8080, Direction::In);
    server.states.insert(CloseWait, now(12, 3.0));
    let mut client = row(8080, Direction::Out);
    client.states.insert(
        FinWait2,
        StateSnapshot {
            now: 12,
            oldest_s: Some(3.0),
            oldest_exact: false,
            ..StateSnapshot::default()
        },
    );
    let all = eval_over(&snap(vec![server, client]), 3.0);
    let f = all.iter().find(|f| f.rule == Rule::FinWait2Stuck).unwrap();
    assert_eq!(f.direction, Some(Direction::Out));
    assert_eq!(
        f.evidence,
        "12 in FIN_WAIT2 now, oldest ≥3.0s; 0 left FIN_WAIT2 in 3.0s; :8080 in has 12 in CLOSE_WAIT"
    );
    assert_eq!(
        f.cause,
        "the peer never sends its FIN: it is :8080 in on this host (close_wait_leak)"
    );
    assert!(all.iter().any(|f| f.rule == Rule::CloseWaitLeak));

    // Closed clients leave FIN_WAIT2 for the tracepoint (to CLOSE) but stay
    // in it as orphans: against a local CLOSE_WAIT, exits prove nothing.
    let with_exits_and_mirror = |mirror: u64| {
        let mut server = row(8080, Direction::In);
        server.states.insert(CloseWait, now(mirror, 3.0));
        let mut client = row(8080, Direction::Out);
        client
            .states
            .insert(FinWait2, with_exits(now(12, 3.0), &[(Close, 12)]));
        snap(vec![server, client])
    };
    assert!(has(&with_exits_and_mirror(12), Rule::FinWait2Stuck));
    assert!(!has(&with_exits_and_mirror(0), Rule::FinWait2Stuck));
}

// ---------------------------------------------------------------------------
// 3. FIN_WAIT1
// ---------------------------------------------------------------------------

#[test]
fn fin_wait1_long_now_or_in_stays_that_ended() {
    let fw1 = |oldest_s, p99_s| {
        let mut r = row(443, Direction::In);
        r.states.insert(FinWait1, with_p99(now(1, oldest_s), p99_s));
        one(r)
    };
    assert!(has(&fw1(10.0, 0.1), Rule::FinWait1Stuck));
    assert!(!has(&fw1(9.9, 0.1), Rule::FinWait1Stuck));
    assert!(has(&fw1(0.1, 10.0), Rule::FinWait1Stuck));
    assert!(!has(&fw1(0.1, 9.9), Rule::FinWait1Stuck));
    let f = only(&fw1(12.0, 0.04), Rule::FinWait1Stuck);
    assert_eq!(
        f.evidence,
        "1 in FIN_WAIT1 now, oldest 12s; p99 of 100 stays that ended 40ms"
    );
    assert_eq!(
        f.cause,
        "our FIN is not acknowledged: loss, or the peer is gone"
    );
}

// ---------------------------------------------------------------------------
// 4. TIME_WAIT and the ephemeral ports
// ---------------------------------------------------------------------------

#[test]
fn time_wait_to_one_port_approaching_the_ephemeral_range() {
    // 32768..=60999: 28232 ports; half is 14116.
    let tw = |n| {
        let mut r = row(5432, Direction::Out);
        r.states.insert(TimeWait, now(n, 10.0));
        one(r)
    };
    assert_eq!(
        only(&tw(14_116), Rule::EphemeralPortExhaustion).severity,
        Severity::Warning
    );
    assert!(!has(&tw(14_115), Rule::EphemeralPortExhaustion));
    assert_eq!(
        only(&tw(25_409), Rule::EphemeralPortExhaustion).severity,
        Severity::Critical
    );
    assert_eq!(
        only(&tw(25_408), Rule::EphemeralPortExhaustion).severity,
        Severity::Warning
    );
    // Inbound rows are the server side (rule 5), never this rule.
    let mut server = row(5432, Direction::In);
    server.states.insert(TimeWait, now(20_000, 10.0));
    assert!(!has(&one(server), Rule::EphemeralPortExhaustion));
    // A narrower range: 1000 ports.
    let cfg = FindingsConfig {
        ephemeral: 1000..=1999,
        ..FindingsConfig::default()
    };
    assert!(
        evaluate(&tw(500), 60.0, &cfg)
            .iter()
            .any(|f| f.rule == Rule::EphemeralPortExhaustion)
    );
    assert!(evaluate(&tw(499), 60.0, &cfg).is_empty());
}

/// Active closes per second × 60 s: where TIME_WAIT is heading, before the
/// census shows it.
#[test]
fn time_wait_projected_from_the_rate_of_active_closes() {
    let closing = |closes, window_s| {
        let mut r = row(5432, Direction::Out);
        r.states
            .insert(Established, with_exits(now(16, 1.0), &[(FinWait1, closes)]));
        eval_over(&one(r), window_s)
    };
    let f = closing(1_367, 3.0);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(
        f[0].evidence,
        "0 in TIME_WAIT now; 1367 active closes in 3.0s (456/s) × 60 s = 27340: \
         97% of the 28232 ephemeral ports (32768-60999)"
    );
    assert!(f[0].cause.contains("EADDRNOTAVAIL"), "{}", f[0].cause);
    assert_eq!(
        f[0].action,
        "connection pooling / keep-alive, net.ipv4.tcp_tw_reuse=1; never tcp_tw_recycle \
         (broke NAT, removed in 4.12)"
    );
    // The same closes over an hour: 23 per minute, nothing to see.
    assert!(closing(1_367, 3_600.0).is_empty());
}

// ---------------------------------------------------------------------------
// 5. A server that closes first
// ---------------------------------------------------------------------------

#[test]
fn server_closing_most_connections() {
    let closes = |ours, theirs| {
        let mut r = row(80, Direction::In);
        r.listening = true;
        r.states.insert(
            Established,
            with_exits(now(3, 1.0), &[(FinWait1, ours), (CloseWait, theirs)]),
        );
        one(r)
    };
    let f = only(&closes(5, 5), Rule::ServerActiveClose);
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(
        f.evidence,
        "5 of 10 connections closed by this side (ESTABLISHED -> FIN_WAIT1, not CLOSE_WAIT) in 1m00s; \
         0 in TIME_WAIT now"
    );
    assert!(!has(&closes(4, 6), Rule::ServerActiveClose));
    assert!(
        !has(&closes(4, 0), Rule::ServerActiveClose),
        "too few closes"
    );
    // Clients that close first: the usual.
    assert!(!has(&closes(0, 1000), Rule::ServerActiveClose));
    let tw = |n| {
        let mut r = row(80, Direction::In);
        r.states.insert(TimeWait, now(n, 30.0));
        one(r)
    };
    assert!(has(&tw(1000), Rule::ServerActiveClose));
    assert!(!has(&tw(999), Rule::ServerActiveClose));
}

// ---------------------------------------------------------------------------
// 6. Handshakes and the accept queue
// ---------------------------------------------------------------------------

#[test]
fn synack_retransmits_relative_to_completed_handshakes() {
    let hs = |retrans, completed, failed| {
        let mut r = row(443, Direction::In);
        r.listening = true;
        r.synack_retrans = retrans;
        r.handshakes = Handshakes {
            completed,
            failed,
            time: None,
        };
        one(r)
    };
    assert_eq!(
        only(&hs(5, 50, 0), Rule::HandshakeFailures).severity,
        Severity::Warning
    );
    assert!(!has(&hs(5, 51, 0), Rule::HandshakeFailures));
    assert!(!has(&hs(4, 0, 0), Rule::HandshakeFailures), "too few");
    // Failures: 1 % of handshakes, at least 5.
    assert!(has(&hs(0, 495, 5), Rule::HandshakeFailures));
    assert!(!has(&hs(0, 496, 5), Rule::HandshakeFailures));
    assert!(!has(&hs(0, 0, 4), Rule::HandshakeFailures));
    // More failing than completing: critical.
    let f = only(&hs(40, 5, 6), Rule::HandshakeFailures);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(
        f.evidence,
        "40 SYN-ACK retransmits in 1m00s (0.7/s) for 5 completed handshakes, 6 failed; 0 in SYN_RECV now"
    );
    assert!(f.cause.contains("SYN flood"), "{}", f.cause);
    assert!(f.action.contains("tcp_syncookies"), "{}", f.action);
}

#[test]
fn a_full_accept_queue_is_critical_and_explains_retransmits() {
    let queue = |len| {
        let mut r = row(443, Direction::In);
        r.listening = true;
        r.accept_queue = Some(AcceptQueue { len, max: 128 });
        r.states.insert(SynRecv, now(30, 2.0));
        r.synack_retrans = 50;
        r.handshakes.completed = 100;
        one(r)
    };
    let all = eval(&queue(128));
    assert_eq!(
        all.iter().map(|f| f.rule).collect::<Vec<_>>(),
        [Rule::HandshakeFailures, Rule::AcceptQueueFull]
    );
    assert!(all.iter().all(|f| f.severity == Severity::Critical));
    assert_eq!(
        all[1].evidence,
        "accept queue 128/128 now (full); 30 in SYN_RECV, 50 SYN-ACK retransmits"
    );
    assert!(
        all[0].cause.starts_with("accept-queue overflow"),
        "{}",
        all[0].cause
    );
    let calm = eval(&queue(127));
    assert_eq!(calm.len(), 1);
    assert_eq!(calm[0].rule, Rule::HandshakeFailures);
    assert_eq!(calm[0].severity, Severity::Warning);
    assert!(calm[0].cause.contains("SYN flood"));
    // An unknown limit (0) is not "full".
    let mut r = row(443, Direction::In);
    r.accept_queue = Some(AcceptQueue { len: 0, max: 0 });
    assert!(eval(&one(r)).is_empty());
}

// ---------------------------------------------------------------------------
// 7. and 8. Connects: timeouts and refusals
// ---------------------------------------------------------------------------

#[test]
fn connect_timeouts_are_syn_sent_to_close_without_a_reset() {
    let timeouts = |closed, refused| {
        let mut r = row(443, Direction::Out);
        r.states
            .insert(SynSent, with_exits(now(0, 0.0), &[(Close, closed)]));
        r.resets_received.insert(SynSent, refused);
        one(r)
    };
    let f = only(&timeouts(8, 3), Rule::ConnectTimeouts);
    assert_eq!(
        f.evidence,
        "5 connects ended SYN_SENT -> CLOSE without a reset in 1m00s (0.083/s); 0 in SYN_SENT now"
    );
    assert!(f.cause.starts_with("connect timeouts"), "{}", f.cause);
    assert!(!has(&timeouts(7, 3), Rule::ConnectTimeouts));
    // Five over ten minutes is below 0.01/s.
    assert!(
        eval_over(&timeouts(8, 3), 600.0)
            .iter()
            .all(|f| f.rule != Rule::ConnectTimeouts)
    );
    let waiting = |oldest_s| {
        let mut r = row(443, Direction::Out);
        r.states.insert(SynSent, now(2, oldest_s));
        one(r)
    };
    assert!(has(&waiting(3.0), Rule::ConnectTimeouts));
    assert!(!has(&waiting(2.9), Rule::ConnectTimeouts));
}

#[test]
fn resets_in_syn_sent_are_refused_connections() {
    let refused = |n| {
        let mut r = row(9, Direction::Out);
        r.states
            .insert(SynSent, with_exits(now(0, 0.0), &[(Close, n)]));
        r.resets_received.insert(SynSent, n);
        one(r)
    };
    let all = eval_over(&refused(1366), 3.0);
    assert_eq!(all.len(), 1, "refusals are not timeouts: {all:#?}");
    assert_eq!(all[0].rule, Rule::ConnectionRefused);
    assert_eq!(
        all[0].evidence,
        "1366 resets received in SYN_SENT in 3.0s (455/s)"
    );
    assert_eq!(
        all[0].cause,
        "nothing listens on :9 at the target: ECONNREFUSED"
    );
    assert!(has(&refused(5), Rule::ConnectionRefused));
    assert!(!has(&refused(4), Rule::ConnectionRefused));
}

// ---------------------------------------------------------------------------
// 9. and 10. Resets sent
// ---------------------------------------------------------------------------

#[test]
fn resets_for_no_socket_on_a_port_nobody_listens_on() {
    let closed = |n, listening| {
        let mut r = row(9, Direction::In);
        r.listening = listening;
        r.resets_sent = vec![
            reset("NO_SOCKET", None, n),
            // A socket existed: not "no listener".
            reset("NO_SOCKET", Some(SynRecv), 50),
        ];
        one(r)
    };
    let f = &eval_over(&closed(1366, false), 3.0)[0];
    assert_eq!((f.rule, f.severity), (Rule::NoListener, Severity::Warning));
    assert_eq!(
        f.evidence,
        "1366 resets sent for packets that matched no socket (NO_SOCKET 1366) in 3.0s (455/s)"
    );
    assert_eq!(
        f.cause,
        "clients hit :9, where nothing listens: ECONNREFUSED"
    );
    assert!(has(&closed(5, false), Rule::NoListener));
    assert!(!has(&closed(4, false), Rule::NoListener));
    // On a port that listens, they are packets of connections it no longer has.
    let f = only(&closed(5, true), Rule::NoListener);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.cause.contains("no longer has"), "{}", f.cause);
}

#[test]
fn resets_sent_on_close_abort_connections() {
    let aborts = |resets| {
        let mut r = row(8080, Direction::In);
        r.resets_sent = resets;
        one(r)
    };
    let f = only(
        &aborts(vec![
            reset("TCP_ABORT_ON_CLOSE", Some(Established), 3),
            reset("TCP_STATE", Some(Established), 1),
            reset("TCP_ABORT_ON_LINGER", Some(CloseWait), 1),
            // Not an abort by the application.
            reset("TCP_STATE", Some(SynRecv), 10),
            reset("NO_SOCKET", None, 2),
        ]),
        Rule::AbortOnClose,
    );
    assert_eq!(
        f.evidence,
        "5 resets sent on close (TCP_ABORT_ON_CLOSE (in ESTABLISHED) 3, TCP_ABORT_ON_LINGER (in CLOSE_WAIT) 1, \
         TCP_STATE (in ESTABLISHED) 1) in 1m00s (0.083/s)"
    );
    assert!(f.cause.ends_with("peers get ECONNRESET"), "{}", f.cause);
    assert!(!has(
        &aborts(vec![
            reset("TCP_ABORT_ON_CLOSE", Some(Established), 3),
            reset("TCP_STATE", Some(Established), 1),
            reset("TCP_STATE", Some(SynRecv), 10),
        ]),
        Rule::AbortOnClose
    ));
    // Kernels without reasons: resets sent from ESTABLISHED.
    assert!(has(
        &aborts(vec![reset("unknown", Some(Established), 5)]),
        Rule::AbortOnClose
    ));
    assert!(!has(
        &aborts(vec![reset("unknown", Some(FinWait1), 5)]),
        Rule::AbortOnClose
    ));
}

// ---------------------------------------------------------------------------
// 11. Half-open connections
// ---------------------------------------------------------------------------

#[test]
fn resets_after_long_in_established_are_half_open_connections() {
    let resets = |n| {
        let mut r = row(5432, Direction::Out);
        r.resets_received.insert(Established, n + 2);
        r.resets_received_long_established = n;
        one(r)
    };
    let f = only(&resets(5), Rule::HalfOpenResets);
    assert_eq!(
        f.evidence,
        "5 resets received in ESTABLISHED on connections established ≥2m00s in 1m00s (0.083/s) \
         (7 in ESTABLISHED in all)"
    );
    assert!(f.action.contains("keepalive"), "{}", f.action);
    assert!(!has(&resets(4), Rule::HalfOpenResets));
    assert!(eval_over(&resets(5), 1_000.0).is_empty());
}

// ---------------------------------------------------------------------------
// 12. Lost events
// ---------------------------------------------------------------------------

#[test]
fn lost_events_make_a_host_wide_finding() {
    let lost = |lost, total| Snapshot {
        events: EventCounts {
            total,
            lost,
            ..EventCounts::default()
        },
        ..Snapshot::default()
    };
    assert!(eval(&lost(0, 1_000)).is_empty());
    let f = &eval(&lost(7, 36_000))[0];
    assert_eq!(
        (f.rule, f.port, f.direction, f.severity),
        (Rule::LostEvents, None, None, Severity::Warning)
    );
    assert_eq!(f.evidence, "7 events lost, 36000 read (0.02% lost)");
    assert_eq!(f.location(), "all ports");
    assert!(f.concerns(Some(80), Direction::In));
    assert!(f.action.contains("--ring-size"), "{}", f.action);
    // 1 % or more: critical.
    assert_eq!(eval(&lost(10, 990))[0].severity, Severity::Critical);
    assert_eq!(eval(&lost(9, 991))[0].severity, Severity::Warning);
}

#[test]
fn lost_events_say_whether_a_bigger_ring_would_help() {
    let lost = |lost, lost_skipped| Snapshot {
        events: EventCounts {
            total: 36_000,
            lost,
            lost_skipped,
            ..EventCounts::default()
        },
        ..Snapshot::default()
    };
    let full = &eval(&lost(7, 0))[0];
    assert_eq!(
        full.cause,
        "the ring buffer overflowed: every number here misses those events"
    );
    let skipped = &eval(&lost(2, 2))[0];
    assert_eq!(
        skipped.cause,
        "the kernel skipped the tracer for them (recursion guard): every number here misses \
         those events"
    );
    assert!(
        skipped.action.starts_with("nothing to tune"),
        "{}",
        skipped.action
    );
    let both = &eval(&lost(7, 2))[0];
    assert_eq!(
        both.cause,
        "the ring buffer overflowed (5) and the kernel skipped the tracer (2, recursion guard): \
         every number here misses those events"
    );
    assert!(both.action.contains("--ring-size"), "{}", both.action);
}

// ---------------------------------------------------------------------------
// Order, windows, configuration
// ---------------------------------------------------------------------------

#[test]
fn sorted_by_severity_then_port_with_other_and_host_wide_last() {
    let refused = |port: Option<u16>| {
        let mut r = row(0, Direction::Out);
        r.port = port;
        r.resets_received.insert(SynSent, 50);
        r
    };
    let mut full = row(8080, Direction::In);
    full.accept_queue = Some(AcceptQueue { len: 4, max: 4 });
    let mut listener = row(443, Direction::In);
    listener.resets_sent = vec![reset("NO_SOCKET", None, 9)];
    listener.listening = true;
    let mut s = snap(vec![
        refused(Some(9)),
        refused(Some(7)),
        refused(None),
        listener,
        full,
    ]);
    s.events.lost = 1;
    s.events.total = 1_000_000;
    let order: Vec<(Severity, String, Rule)> = eval(&s)
        .into_iter()
        .map(|f| (f.severity, f.location(), f.rule))
        .collect();
    assert_eq!(
        order,
        [
            (Severity::Critical, ":8080 in".into(), Rule::AcceptQueueFull),
            (Severity::Warning, ":7 out".into(), Rule::ConnectionRefused),
            (Severity::Warning, ":9 out".into(), Rule::ConnectionRefused),
            (Severity::Warning, "all ports".into(), Rule::LostEvents),
            (
                Severity::Warning,
                ":other out".into(),
                Rule::ConnectionRefused
            ),
            (Severity::Info, ":443 in".into(), Rule::NoListener),
        ]
    );
}

/// Counts now and ages do not depend on the window; events do.
#[test]
fn the_window_scales_event_rules_only() {
    let mut r = row(9, Direction::Out);
    r.resets_received.insert(SynSent, 36);
    r.states.insert(CloseWait, now(1, 3_600.0));
    let s = one(r);
    let rules =
        |window_s| -> Vec<Rule> { eval_over(&s, window_s).iter().map(|f| f.rule).collect() };
    // 36 refusals in a minute (a report) or in an hour (a cumulative view
    // an hour in) are 0.01/s; over two hours they fade out.
    assert_eq!(rules(60.0), [Rule::CloseWaitLeak, Rule::ConnectionRefused]);
    assert_eq!(
        rules(3_600.0),
        [Rule::CloseWaitLeak, Rule::ConnectionRefused]
    );
    assert_eq!(rules(7_200.0), [Rule::CloseWaitLeak]);
    // An unknown window: counts alone.
    assert_eq!(rules(0.0), [Rule::CloseWaitLeak, Rule::ConnectionRefused]);
    assert_eq!(
        rules(f64::NAN),
        [Rule::CloseWaitLeak, Rule::ConnectionRefused]
    );
}

#[test]
fn thresholds_are_configurable() {
    let mut r = row(8080, Direction::In);
    r.states.insert(CloseWait, now(3, 1.0));
    r.resets_sent = vec![reset("NO_SOCKET", None, 2)];
    let s = one(r);
    assert!(eval(&s).is_empty());
    let cfg = FindingsConfig {
        close_wait_count: 3,
        min_events: 2,
        ..FindingsConfig::default()
    };
    let rules: Vec<Rule> = evaluate(&s, 60.0, &cfg).iter().map(|f| f.rule).collect();
    assert_eq!(rules, [Rule::CloseWaitLeak, Rule::NoListener]);
    let strict = FindingsConfig {
        no_listener_per_s: 1.0,
        ..cfg
    };
    let rules: Vec<Rule> = evaluate(&s, 60.0, &strict).iter().map(|f| f.rule).collect();
    assert_eq!(rules, [Rule::CloseWaitLeak]);
}

#[test]
fn config_defaults_validation_and_serde() {
    let d = FindingsConfig::default();
    assert!(d.validate().is_ok());
    assert_eq!(d.half_open_after_ns(), 120_000_000_000);
    let bad = FindingsConfig {
        refused_per_s: f64::INFINITY,
        ..FindingsConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "refused_per_s must be a number >= 0, not inf"
    );
    // Every key optional; ephemeral is not a key.
    let parsed: FindingsConfig = toml::from_str("min_events = 2\nfin_wait1_age_s = 30").unwrap();
    assert_eq!(
        parsed,
        FindingsConfig {
            min_events: 2,
            fin_wait1_age_s: 30.0,
            ..FindingsConfig::default()
        }
    );
    assert!(toml::from_str::<FindingsConfig>("ephemeral = 3").is_err());
}

#[test]
fn findings_round_trip_through_json() {
    let mut r = row(9, Direction::Out);
    r.resets_received.insert(SynSent, 50);
    let mut s = one(r);
    s.events.lost = 3;
    s.findings = eval(&s);
    let text = serde_json::to_string(&s).unwrap();
    assert!(
        text.contains(
            r#""rule":"connection_refused","port":9,"direction":"out","severity":"warning""#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#""rule":"lost_events","port":null,"direction":null"#),
        "{text}"
    );
    let back: Snapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    // Snapshots written before findings existed still read.
    let old = text.split(",\"findings\":").next().unwrap().to_string() + "}";
    let back: Snapshot = serde_json::from_str(&old).unwrap();
    assert!(back.findings.is_empty());
}
