//! Hand-built snapshots for the view tests: an incident an hour into tracing.

use std::collections::BTreeMap;

use crate::findings::{FindingsConfig, evaluate};
use crate::snapshot::{
    AcceptQueue, Bucket, Direction, Dwell, EventCounts, Handshakes, PortSnapshot, ResetCount,
    Snapshot, StateSnapshot, StuckSocket,
};
use crate::tcp::TcpState;

fn port(port: Option<u16>, direction: Direction) -> PortSnapshot {
    PortSnapshot::empty(port, direction)
}

fn now(n: u64) -> StateSnapshot {
    StateSnapshot {
        now: n,
        ..StateSnapshot::default()
    }
}

fn dwell(p50_us: u64, p99_us: u64, max_us: u64, buckets: &[(u64, u64)]) -> Dwell {
    Dwell {
        count: buckets.iter().map(|b| b.1).sum(),
        min_us: 1,
        p50_us,
        p90_us: u64::midpoint(p50_us, p99_us),
        p99_us,
        max_us,
        mean_us: p50_us as f64,
        buckets: buckets
            .iter()
            .map(|&(le_us, count)| Bucket { le_us, count })
            .collect(),
    }
}

fn stuck(state: TcpState, remote: &str, age_s: f64, exact: bool) -> StuckSocket {
    StuckSocket {
        state,
        local: "10.1.0.7:8080".to_string(),
        remote: remote.to_string(),
        netns: 4_026_531_840,
        age_s,
        exact,
        pid: Some(4242),
        comm: Some("java".to_string()),
    }
}

/// Port 8080 in: a server leaking CLOSE_WAIT (312, the oldest ≥41 min).
fn web() -> PortSnapshot {
    let mut web = port(Some(8080), Direction::In);
    web.listening = true;
    web.accept_queue = Some(AcceptQueue { len: 3, max: 128 });
    web.transitions = 9_000;
    web.synack_retrans = 4;
    web.retransmits = 17;
    web.states.insert(TcpState::SynRecv, now(2));
    web.states.insert(
        TcpState::Established,
        StateSnapshot {
            now: 40,
            oldest_s: Some(900.0),
            oldest_exact: true,
            entered: 1_200,
            exits: BTreeMap::from([(TcpState::CloseWait, 1_150), (TcpState::Close, 10)]),
            dwell: Some(dwell(
                180_000,
                4_000_000,
                61_000_000,
                &[
                    (65_536, 100),
                    (262_144, 900),
                    (4_194_304, 150),
                    (67_108_864, 10),
                ],
            )),
            dwell_unknown: 0,
        },
    );
    web.states.insert(
        TcpState::CloseWait,
        StateSnapshot {
            now: 312,
            oldest_s: Some(2_460.0),
            oldest_exact: false,
            entered: 1_150,
            exits: BTreeMap::from([(TcpState::LastAck, 838)]),
            dwell: Some(dwell(
                2_000_000,
                545_000_000,
                2_470_000_000,
                &[(4_194_304, 700), (268_435_456, 130), (4_294_967_296, 8)],
            )),
            dwell_unknown: 25,
        },
    );
    web.states.insert(TcpState::LastAck, now(1));
    web.handshakes = Handshakes {
        completed: 1_200,
        failed: 3,
        time: Some(dwell(
            120,
            900,
            3_100_000,
            &[(256, 1_100), (1_024, 97), (4_194_304, 3)],
        )),
    };
    web.resets_received.insert(TcpState::CloseWait, 1);
    web.oldest = vec![
        stuck(TcpState::CloseWait, "192.0.2.14:51234", 2_460.0, false),
        stuck(TcpState::CloseWait, "192.0.2.15:40110", 1_325.5, true),
    ];
    web
}

/// Port 8080 in: a server leaking CLOSE_WAIT (312, the oldest ≥41 min).
/// Port 9 in: nothing listens, 20 resets NO_SOCKET. Port 5432 out: a
/// client pool with TIME_WAIT. `other`: folded ports.
pub fn incident() -> Snapshot {
    let web = web();
    let mut discard = port(Some(9), Direction::In);
    discard.resets_sent.push(ResetCount {
        reason: "NO_SOCKET".to_string(),
        state_before: None,
        count: 20,
    });

    let mut pg = port(Some(5432), Direction::Out);
    pg.transitions = 500;
    pg.states.insert(
        TcpState::Established,
        StateSnapshot {
            now: 16,
            oldest_s: Some(7_500.0),
            oldest_exact: true,
            entered: 100,
            exits: BTreeMap::from([(TcpState::FinWait1, 84)]),
            dwell: Some(dwell(1_500_000, 12_000_000, 30_000_000, &[(4_194_304, 84)])),
            dwell_unknown: 0,
        },
    );
    pg.states.insert(TcpState::TimeWait, now(57));
    pg.resets_sent.push(ResetCount {
        reason: "TCP_ABORT_ON_CLOSE".to_string(),
        state_before: Some(TcpState::Established),
        count: 2,
    });

    let mut other = port(None, Direction::In);
    other.transitions = 100;
    other.states.insert(TcpState::Established, now(5));

    let mut snap = Snapshot {
        time: "2024-05-01T12:00:00Z".to_string(),
        uptime_s: 3_600.0,
        events: EventCounts {
            total: 36_000,
            by_kind: BTreeMap::from([("state".to_string(), 35_000)]),
            lost: 7,
            lost_skipped: 0,
            undecodable: 0,
            untracked: 3,
            folded_ports: 12,
        },
        sockets_tracked: 480,
        ports: vec![discard, pg, web, other],
        findings: Vec::new(),
    };
    with_findings(&mut snap);
    snap
}

/// Fills in the findings as a session does for a cumulative snapshot: over
/// the whole uptime, default thresholds. For [`incident`]: CLOSE_WAIT on
/// 8080 in (critical) and the lost events (warning).
pub fn with_findings(snap: &mut Snapshot) {
    snap.findings = evaluate(snap, snap.uptime_s, &FindingsConfig::default());
}

/// Two seconds after [`incident`]: 8080 made 50 transitions, 9 got 4 more
/// resets, and 443 in appeared with 8 transitions.
pub fn later() -> Snapshot {
    let mut s = incident();
    s.time = "2024-05-01T12:00:02Z".to_string();
    s.uptime_s = 3_602.0;
    s.events.total = 36_050;
    for p in &mut s.ports {
        match p.port {
            Some(8080) => {
                p.transitions = 9_050;
                p.synack_retrans = 5;
            }
            Some(9) => p.resets_sent[0].count = 24,
            _ => {}
        }
    }
    let mut tls = port(Some(443), Direction::In);
    tls.transitions = 8;
    tls.resets_received.insert(TcpState::Established, 2);
    s.ports.insert(1, tls);
    with_findings(&mut s);
    s
}
