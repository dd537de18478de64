//! Tests of `/metrics` from outside: the exposition passes `promtool check
//! metrics`, and the HTTP endpoint answers with the right status, content
//! type and body. No root needed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tcptrace::findings::{FindingsConfig, evaluate};
use tcptrace::metrics::{self, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use tcptrace::snapshot::{
    AcceptQueue, Bucket, Direction, Dwell, EventCounts, Handshakes, PortSnapshot, ResetCount,
    Snapshot, StateSnapshot,
};
use tcptrace::tcp::TcpState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

fn dwell(count: u64, buckets: &[(u64, u64)]) -> Dwell {
    Dwell {
        count,
        mean_us: 1234.5,
        buckets: buckets
            .iter()
            .map(|&(le_us, count)| Bucket { le_us, count })
            .collect(),
        ..Dwell::default()
    }
}

fn row(port: Option<u16>, direction: Direction) -> PortSnapshot {
    let state = StateSnapshot {
        now: 2,
        oldest_s: Some(3.5),
        oldest_exact: true,
        entered: 9,
        exits: BTreeMap::from([(TcpState::CloseWait, 4), (TcpState::Close, 1)]),
        dwell: Some(dwell(5, &[(4, 1), (1024, 3), (1 << 40, 1)])),
        dwell_unknown: 0,
    };
    PortSnapshot {
        port,
        direction,
        listening: direction == Direction::In,
        accept_queue: (direction == Direction::In).then_some(AcceptQueue { len: 1, max: 511 }),
        transitions: 5,
        states: BTreeMap::from([
            (TcpState::Established, state.clone()),
            (TcpState::Unknown(77), state),
        ]),
        synack_retrans: 2,
        handshakes: Handshakes {
            completed: 3,
            failed: 1,
            time: Some(dwell(3, &[(256, 3)])),
        },
        resets_sent: vec![
            ResetCount {
                reason: "NO_SOCKET".to_string(),
                state_before: None,
                count: 6,
            },
            ResetCount {
                reason: "NO_SOCKET".to_string(),
                state_before: Some(TcpState::SynRecv),
                count: 1,
            },
        ],
        resets_received: BTreeMap::from([(TcpState::SynSent, 8)]),
        resets_received_long_established: 0,
        retransmits: 11,
        oldest: Vec::new(),
    }
}

/// Every metric family with series, the same port in both directions, and
/// "other" rows in both directions.
/// With its findings (`tcptrace_findings`), host-wide ones included.
fn sample() -> Snapshot {
    let mut snap = Snapshot {
        time: "2026-01-01T00:00:00Z".to_string(),
        uptime_s: 60.0,
        events: EventCounts {
            total: 100,
            by_kind: BTreeMap::from([("state".to_string(), 90), ("retrans".to_string(), 10)]),
            lost: 3,
            lost_skipped: 1,
            undecodable: 1,
            untracked: 2,
            folded_ports: 40,
        },
        sockets_tracked: 8,
        ports: vec![
            row(Some(443), Direction::In),
            row(Some(443), Direction::Out),
            row(None, Direction::In),
            row(None, Direction::Out),
        ],
        findings: Vec::new(),
    };
    snap.findings = evaluate(&snap, snap.uptime_s, &FindingsConfig::default());
    assert!(snap.findings.len() > 4, "{:?}", snap.findings);
    snap
}

#[test]
#[ignore = "needs promtool: run `cargo xtask test`"]
fn promtool_accepts_the_exposition() {
    for snap in [sample(), Snapshot::default()] {
        let text = metrics::encode(&snap);
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool not found (Debian package `prometheus`): run `cargo xtask setup`");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        // promtool prints each lint problem and exits non-zero.
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}\n{}{}\non:\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// One request on its own connection; returns (status, headers, body).
async fn fetch(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn endpoint_serves_metrics_health_and_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (publish, latest) = watch::channel(Arc::new(sample()));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, latest, async {
        let _ = stopped.await;
    }));

    let (status, head, body) = fetch(addr, &get("/metrics", "")).await;
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("content-type: {PROMETHEUS_CONTENT_TYPE}")),
        "{head}"
    );
    assert_eq!(body, metrics::encode(&sample()));
    assert!(
        body.lines().any(|l| l
            == r#"tcptrace_resets_sent_total{port="443",direction="in",reason="NO_SOCKET"} 7"#),
        "{body}"
    );
    assert!(body.lines().any(|l| l == "tcptrace_events_lost_total 3"));
    assert!(
        body.lines()
            .any(|l| l == "tcptrace_events_lost_skipped_total 1")
    );

    // Prometheus's own Accept header gets OpenMetrics.
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let (status, head, body) = fetch(addr, &get("/metrics", accept)).await;
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE tcptrace_resets_sent counter\n"));

    // A new snapshot shows on the next scrape.
    let mut next = sample();
    next.events.lost = 99;
    publish.send(Arc::new(next)).unwrap();
    let (_, _, body) = fetch(addr, &get("/metrics", "")).await;
    assert!(
        body.lines().any(|l| l == "tcptrace_events_lost_total 99"),
        "{body}"
    );

    assert_eq!(fetch(addr, &get("/healthz", "")).await.2, "ok\n");
    assert_eq!(fetch(addr, &get("/healthz", "")).await.0, 200);
    assert_eq!(fetch(addr, &get("/nope", "")).await.0, 404);
    let post = "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (status, head, _) = fetch(addr, post).await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get"), "{head}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
