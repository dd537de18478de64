//! Kernel tests of `tcptrace daemon`: reports against a controlled workload,
//! the signals, least privilege, and a real Prometheus server scraping it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Netns, TempDir, Trace, wait_until};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` connects to port 9, where nothing listens in a fresh namespace.
fn refuse(ns: &Netns, n: usize) {
    ns.run(move || {
        for _ in 0..n {
            assert!(TcpStream::connect("127.0.0.1:9").is_err());
        }
    });
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill on a child's pid.
    assert_eq!(unsafe { libc::kill(pid.cast_signed(), sig) }, 0);
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until `path` holds `n` reports and returns them.
fn reports(path: &Path, n: usize) -> Vec<Value> {
    assert!(
        wait_until(Duration::from_secs(10), || lines(path).len() >= n),
        "{} reports in {}",
        n,
        path.display()
    );
    lines(path)
}

/// NO_SOCKET resets sent on port 9 in a report.
fn refused_in(report: &Value) -> u64 {
    report["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 9 && p["direction"] == "in")
        .map_or(0, |p| {
            p["resets_sent"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["reason"] == "NO_SOCKET")
                .map(|r| r["count"].as_u64().unwrap())
                .sum()
        })
}

/// Ids of the BPF programs a process holds open, from its fds' fdinfo
/// (program and link fds both name their program).
fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .map(|v| v.trim().parse().unwrap())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every program loaded in the kernel, by id.
fn all_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

fn daemon(ns: &Netns, out: &Path, listen: u16, extra: &[&str]) -> Trace {
    let (inode, listen, out) = (
        ns.inode.to_string(),
        format!("127.0.0.1:{listen}"),
        out.display().to_string(),
    );
    let mut args = vec![
        "daemon",
        "--interval",
        "1h",
        "--format",
        "json",
        "--output",
        &out,
        "--listen",
        &listen,
        "--netns",
        &inode,
    ];
    args.extend_from_slice(extra);
    Trace::start(&args, "metrics on http://")
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn reports_follow_the_workload_and_the_signals() {
    let ns = Netns::new("daemon");
    let dir = TempDir::new("daemon");
    let out = dir.0.join("reports.jsonl");
    let trace = daemon(&ns, &out, free_port(), &[]);
    let pid = trace.pid();

    refuse(&ns, 3);
    signal(pid, libc::SIGUSR1);
    let first = reports(&out, 1);
    assert_eq!(
        (first[0]["report"].as_str(), refused_in(&first[0])),
        (Some("interval"), 3)
    );

    refuse(&ns, 5);
    signal(pid, libc::SIGUSR1);
    let two = reports(&out, 2);
    assert_eq!(
        refused_in(&two[1]),
        5,
        "the second report covers its own interval only"
    );
    assert!(two[1]["interval_s"].as_f64().unwrap() > 0.0);
    assert_eq!(two[1]["events"]["lost"], 0);

    // Log rotation: the file is moved away, SIGHUP reopens the path.
    let rotated = dir.0.join("reports.jsonl.1");
    std::fs::rename(&out, &rotated).unwrap();
    signal(pid, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || out.exists()),
        "SIGHUP recreates the file"
    );
    refuse(&ns, 2);
    signal(pid, libc::SIGUSR1);
    assert_eq!(refused_in(&reports(&out, 1)[0]), 2);
    assert_eq!(
        lines(&rotated).len(),
        2,
        "the rotated file keeps the old reports"
    );

    let progs = programs_of(pid);
    assert_eq!(
        progs.len(),
        6,
        "one program per hook, and the state events' catcher: {progs:?}"
    );
    refuse(&ns, 1);
    signal(pid, libc::SIGTERM);
    let (_, stderr) = trace.finish();
    let last = lines(&out).pop().unwrap();
    assert_eq!(
        (last["report"].as_str(), refused_in(&last)),
        (Some("final"), 1),
        "{stderr:?}"
    );
    // The kernel frees programs after an RCU grace period: poll briefly.
    let gone = wait_until(Duration::from_secs(5), || {
        let remaining = all_program_ids();
        progs.iter().all(|id| !remaining.contains(id))
    });
    assert!(gone, "programs left attached: {progs:?}");
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn with_user_it_runs_without_capabilities_and_still_traces() {
    let ns = Netns::new("user");
    let dir = TempDir::new("user");
    let out = dir.0.join("reports.jsonl");
    let port = free_port();
    let trace = daemon(&ns, &out, port, &["--user", "nobody"]);
    let pid = trace.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    refuse(&ns, 4);
    signal(pid, libc::SIGUSR1);
    assert_eq!(
        refused_in(&reports(&out, 1)[0]),
        4,
        "the ring buffer is still read"
    );
    let metrics = http_get(&format!("127.0.0.1:{port}"), "/metrics");
    assert!(
        metrics.contains("tcptrace_events_lost_total 0"),
        "{metrics}"
    );
    signal(pid, libc::SIGTERM);
    trace.finish();
}

/// GET over HTTP/1.0; returns the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback with a generated config, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (cargo xtask setup installs it)");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query with exactly one series, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return None;
        };
        let _ = write!(
            s,
            "GET /api/v1/query?query={} HTTP/1.0\r\nHost: x\r\n\r\n",
            urlencode(promql)
        );
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let body: Value = serde_json::from_str(resp.split_once("\r\n\r\n")?.1).ok()?;
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root, a BTF kernel and prometheus: run `cargo xtask test`"]
fn a_real_prometheus_scrapes_the_resets_the_workload_made() {
    let ns = Netns::new("prom");
    let dir = TempDir::new("prom-daemon");
    let port = free_port();
    let trace = daemon(&ns, &dir.0.join("r.jsonl"), port, &[]);
    let target = format!("127.0.0.1:{port}");
    let prom = Prometheus::start(&target);
    refuse(&ns, 7);
    let deadline = Instant::now() + Duration::from_secs(40);
    let sent = r#"tcptrace_resets_sent_total{port="9",direction="in",reason="NO_SOCKET"}"#;
    let got = r#"tcptrace_resets_received_total{port="9",direction="out",state="SYN_SENT"}"#;
    while Instant::now() < deadline && prom.query(sent) != Some(7.0) {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        prom.query(sent),
        Some(7.0),
        "Prometheus has the resets sent"
    );
    assert_eq!(prom.query(got), Some(7.0));
    assert_eq!(prom.query("tcptrace_events_lost_total"), Some(0.0));
    assert_eq!(prom.query(r#"up{job="tcptrace"}"#), Some(1.0));

    // promtool agrees with the exposition format.
    let body = http_get(&target, "/metrics");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let result = check.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(http_get(&target, "/healthz"), "ok\n");
    signal(trace.pid(), libc::SIGTERM);
    trace.finish();
}
