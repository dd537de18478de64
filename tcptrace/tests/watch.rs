//! Kernel tests of `tcptrace watch --once --json`: a controlled workload in a
//! private namespace, and the snapshot checked exactly against it and against
//! the kernel's own counters.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Netns, Trace, connect_accept, listen};
use serde_json::Value;

/// The row for (port, direction).
fn row<'a>(snap: &'a Value, port: u16, dir: &str) -> &'a Value {
    snap["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port && p["direction"] == dir)
        .unwrap_or_else(|| panic!("no row {port}/{dir} in {snap:#}"))
}

fn state<'a>(row: &'a Value, st: &str) -> &'a Value {
    &row["states"][st]
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario with five workloads, read top to bottom"
)]
fn snapshot_matches_the_workload_and_the_kernel_counters() {
    let ns = Netns::new("watch");
    // Port E: five connections established before tracing starts.
    let (early_listener, early) = ns.run(|| {
        let l = listen("127.0.0.1:0");
        let pairs: Vec<(TcpStream, TcpStream)> = (0..5).map(|_| connect_accept(&l)).collect();
        (l, pairs)
    });
    let port_e = early_listener.local_addr().unwrap().port();
    // Port C: every final ACK dropped on input, so the listener retransmits SYN-ACKs.
    let listener_c = ns.run(|| listen("127.0.0.1:0"));
    let port_c = listener_c.local_addr().unwrap().port();
    ns.nft(&format!(
        "table inet tcptrace_test {{\n chain input {{\n type filter hook input priority 0;\n \
         tcp dport {port_c} tcp flags & (syn | ack) == ack drop\n }}\n}}\n"
    ));
    sleep(Duration::from_millis(300)); // the early sockets are at least this old

    let synretrans0 = ns.netstat("TcpExt", "TCPSynRetrans");
    let (rsts0, passive0, active0) = (
        ns.snmp("Tcp", "OutRsts"),
        ns.snmp("Tcp", "PassiveOpens"),
        ns.snmp("Tcp", "ActiveOpens"),
    );
    let inode = ns.inode.to_string();
    let trace = Trace::start(
        &["watch", "--once", "5s", "--json", "--netns", &inode],
        "tcptrace: tracing",
    );
    let traced_at = Instant::now();

    // Port A: 50 connections whose server holds CLOSE_WAIT for ~300 ms.
    let work_a = ns.spawn(|| {
        let l = listen("127.0.0.1:0");
        let pairs: Vec<(TcpStream, TcpStream)> = (0..50).map(|_| connect_accept(&l)).collect();
        let mut servers = Vec::new();
        for (c, mut s) in pairs {
            drop(c);
            assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
            servers.push(s);
        }
        sleep(Duration::from_millis(300));
        drop(servers);
        l.local_addr().unwrap().port()
    });
    // Port B: 20 refused connections.
    let work_b = ns.spawn(|| {
        let free = listen("127.0.0.1:0");
        let port = free.local_addr().unwrap().port();
        drop(free);
        for _ in 0..20 {
            assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        }
        port
    });
    // Port D: 10 sockets left in CLOSE_WAIT until the snapshot.
    let work_d = ns.spawn(|| {
        let l = listen("127.0.0.1:0");
        let mut kept = Vec::new();
        for _ in 0..10 {
            let (c, mut s) = connect_accept(&l);
            drop(c);
            assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
            kept.push(s);
        }
        let held_from = Instant::now();
        (l, kept, held_from)
    });
    // Port C: one handshake that never completes on the server side.
    let work_c = ns.spawn(move || {
        let client = TcpStream::connect(("127.0.0.1", port_c)).unwrap();
        sleep(Duration::from_millis(3_500));
        client
    });
    let port_a = work_a.join().unwrap();
    let port_b = work_b.join().unwrap();
    let (listener_d, kept_d, held_from) = work_d.join().unwrap();
    let port_d = listener_d.local_addr().unwrap().port();
    let _client_c = work_c.join().unwrap();
    // Kernel counters for the traced period (nothing else runs in this namespace).
    let synretrans = ns.netstat("TcpExt", "TCPSynRetrans") - synretrans0;
    let rsts = ns.snmp("Tcp", "OutRsts") - rsts0;
    let passive = ns.snmp("Tcp", "PassiveOpens") - passive0;
    let active = ns.snmp("Tcp", "ActiveOpens") - active0;

    let (out, _) = trace.finish();
    let snapshot_age_d = held_from.elapsed().as_secs_f64();
    let snap: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(snap["events"]["lost"], 0);
    assert_eq!(snap["events"]["untracked"], 0);

    assert_close_wait_and_refused(&snap, port_a, port_b);
    // C: SYN-ACK retransmits equal the kernel's count.
    let rc = row(&snap, port_c, "in");
    assert_eq!(u(&rc["synack_retrans"]), synretrans);
    assert_eq!(synretrans, 2);
    assert!(rc["listening"].as_bool().unwrap());
    // D: 10 sockets in CLOSE_WAIT now, exact ages.
    let cwd = state(row(&snap, port_d, "in"), "CLOSE_WAIT");
    assert_eq!(u(&cwd["now"]), 10);
    assert!(cwd["oldest_exact"].as_bool().unwrap());
    let age = cwd["oldest_s"].as_f64().unwrap();
    assert!(
        age <= snapshot_age_d + 0.05 && age >= snapshot_age_d - 1.0,
        "age {age} vs held {snapshot_age_d}"
    );
    let oldest = row(&snap, port_d, "in")["oldest"].as_array().unwrap();
    assert_eq!(oldest.len(), 10);
    assert_eq!(oldest[0]["pid"], std::process::id());

    // E: sockets from before tracing: counted, ages "at least".
    let est_e = state(row(&snap, port_e, "in"), "ESTABLISHED");
    assert_eq!(u(&est_e["now"]), 5);
    assert!(!est_e["oldest_exact"].as_bool().unwrap());
    let lower = est_e["oldest_s"].as_f64().unwrap();
    let traced_for = traced_at.elapsed().as_secs_f64();
    assert!(
        lower > 4.0 && lower <= traced_for + 0.5,
        "≥ age {lower} s, traced {traced_for} s"
    );
    assert_eq!(
        u(&state(row(&snap, port_e, "out"), "ESTABLISHED")["now"]),
        5
    );

    assert_totals_match_kernel(&snap, rsts, passive, active);
    drop((early, early_listener, listener_c, kept_d, listener_d));
}

/// A: 50 CLOSE_WAIT stays of ~300 ms; B: 20 refused connections, seen from both sides.
fn assert_close_wait_and_refused(snap: &Value, port_a: u16, port_b: u16) {
    // A: 50 CLOSE_WAIT stays of ~300 ms.
    let ra = row(snap, port_a, "in");
    let cw = state(ra, "CLOSE_WAIT");
    assert_eq!((u(&cw["entered"]), u(&cw["exits"]["LAST_ACK"])), (50, 50));
    assert_eq!(u(&cw["dwell"]["count"]), 50);
    let p50 = u(&cw["dwell"]["p50_us"]);
    assert!((299_000..600_000).contains(&p50), "CLOSE_WAIT p50 {p50} us");
    assert_eq!(u(&ra["handshakes"]["completed"]), 50);
    assert_eq!(
        u(&state(row(snap, port_a, "out"), "ESTABLISHED")["exits"]["FIN_WAIT1"]),
        50
    );

    // B: 20 refused connections, seen from both sides.
    let rb_in = row(snap, port_b, "in");
    assert_eq!(
        rb_in["resets_sent"],
        serde_json::json!([{"reason": "NO_SOCKET", "state_before": null, "count": 20}])
    );
    let rb_out = row(snap, port_b, "out");
    assert_eq!(
        rb_out["resets_received"],
        serde_json::json!({"SYN_SENT": 20})
    );
    assert_eq!(u(&state(rb_out, "SYN_SENT")["exits"]["CLOSE"]), 20);
}

/// Every reset sent and every open, summed over ports, against the kernel's
/// own counters (Tcp: OutRsts, PassiveOpens, ActiveOpens).
fn assert_totals_match_kernel(snap: &Value, rsts: u64, passive: u64, active: u64) {
    let ports = snap["ports"].as_array().unwrap();
    let sent: u64 = ports
        .iter()
        .flat_map(|p| p["resets_sent"].as_array().unwrap())
        .map(|r| u(&r["count"]))
        .sum();
    assert_eq!(sent, rsts);
    let completed: u64 = ports.iter().map(|p| u(&p["handshakes"]["completed"])).sum();
    assert_eq!(completed, passive);
    let connects: u64 = ports
        .iter()
        .filter(|p| p["direction"] == "out")
        .map(|p| p["states"]["SYN_SENT"]["entered"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(connects, active);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn time_wait_comes_from_the_census() {
    let ns = Netns::new("timewait");
    let inode = ns.inode.to_string();
    let trace = Trace::start(
        &["watch", "--once", "1500ms", "--json", "--netns", &inode],
        "tcptrace: tracing",
    );
    let port = ns.run(|| {
        let l = listen("127.0.0.1:0");
        for _ in 0..7 {
            let (c, mut s) = connect_accept(&l);
            drop(c); // the client closes first and keeps TIME_WAIT
            assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
        }
        l.local_addr().unwrap().port()
    });
    let (out, _) = trace.finish();
    let snap: Value = serde_json::from_str(out.trim()).unwrap();
    let tw = state(row(&snap, port, "out"), "TIME_WAIT");
    assert_eq!(u(&tw["now"]), 7);
    let age = tw["oldest_s"].as_f64().unwrap();
    assert!((0.0..3.0).contains(&age), "TIME_WAIT age {age}");
}
