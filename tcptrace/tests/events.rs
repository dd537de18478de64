//! Kernel tests of `tcptrace events`: the real programs, real sockets in a
//! private network namespace, exact sequences and values. Run as root by
//! `cargo xtask test`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::sleep;
use std::time::Duration;

use common::{Netns, Trace, by_sock, connect_accept, listen, transitions};
use serde_json::Value;

const CLIENT_CLOSES_FIRST: [&str; 5] = [
    "CLOSE->SYN_SENT",
    "SYN_SENT->ESTABLISHED",
    "ESTABLISHED->FIN_WAIT1",
    "FIN_WAIT1->FIN_WAIT2",
    "FIN_WAIT2->CLOSE",
];
const SERVER_CLOSES_SECOND: [&str; 5] = [
    "LISTEN->SYN_RECV",
    "SYN_RECV->ESTABLISHED",
    "ESTABLISHED->CLOSE_WAIT",
    "CLOSE_WAIT->LAST_ACK",
    "LAST_ACK->CLOSE",
];

struct OpenClose {
    client: SocketAddr,
    listener: SocketAddr,
}

/// Client connects, server accepts, client closes first; the server waits
/// `hold` in CLOSE_WAIT before closing.
fn open_close(ns: &Netns, bind: &'static str, hold: Duration) -> OpenClose {
    ns.run(move || {
        let l = listen(bind);
        let (c, mut s) = connect_accept(&l);
        let client = c.local_addr().unwrap();
        drop(c);
        assert_eq!(
            s.read(&mut [0u8; 16]).unwrap(),
            0,
            "server sees the client's FIN"
        );
        sleep(hold);
        drop(s);
        let listener = l.local_addr().unwrap();
        drop(l);
        OpenClose { client, listener }
    })
}

/// The one event matching `pred`.
fn the<'a>(events: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| pred(e)).collect();
    assert_eq!(found.len(), 1, "expected one {what} in {events:#?}");
    found[0]
}

fn state_is(e: &Value, old: &str, new: &str) -> bool {
    e["kind"] == "state" && e["old"] == old && e["new"] == new
}

/// Checks the client, accepted and listening sockets of an [`open_close`].
fn assert_open_close(events: &[Value], oc: &OpenClose) -> (Value, Value) {
    let (client, listener) = (oc.client.to_string(), oc.listener.to_string());
    let established = the(events, "client ESTABLISHED", |e| {
        state_is(e, "SYN_SENT", "ESTABLISHED") && e["local"] == client.as_str()
    });
    let client_events = by_sock(events, &established["sock"]);
    assert_eq!(transitions(&client_events), CLIENT_CLOSES_FIRST);
    assert!(
        client_events
            .iter()
            .all(|e| e["remote"] == listener.as_str())
    );
    assert!(client_events.iter().all(|e| e["origin"] == "active"));
    assert_eq!(client_events[0]["pid"], std::process::id());

    let accepted = the(events, "server child", |e| {
        state_is(e, "LISTEN", "SYN_RECV") && e["remote"] == client.as_str()
    });
    let child_events = by_sock(events, &accepted["sock"]);
    assert_eq!(transitions(&child_events), SERVER_CLOSES_SECOND);
    assert!(child_events.iter().all(|e| e["local"] == listener.as_str()));
    assert!(child_events.iter().all(|e| e["origin"] == "passive"));
    // Accepted sockets carry the listener's owner.
    assert!(child_events.iter().all(|e| e["pid"] == std::process::id()));

    let listen_ev = the(events, "listener", |e| {
        state_is(e, "CLOSE", "LISTEN") && e["local"] == listener.as_str()
    });
    assert_eq!(
        transitions(&by_sock(events, &listen_ev["sock"])),
        ["CLOSE->LISTEN", "LISTEN->CLOSE"]
    );
    assert_eq!(
        events.len(),
        12,
        "nothing but the three sockets' transitions: {events:#?}"
    );
    // Time in the old state is known for every transition after the first.
    for e in client_events
        .iter()
        .skip(1)
        .chain(child_events.iter().skip(1))
    {
        assert!(e["dwell_us"].is_u64(), "dwell known: {e}");
    }
    ((*child_events[3]).clone(), (*client_events[1]).clone())
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn client_closes_first_gives_both_full_sequences() {
    let ns = Netns::new("v4");
    let trace = Trace::events(&ns, &[]);
    let oc = open_close(&ns, "127.0.0.1:0", Duration::ZERO);
    let events = trace.stop_json();
    let (_, established) = assert_open_close(&events, &oc);
    assert_eq!(established["family"], "ipv4");
    assert!(established["srtt_us"].is_u64());
    assert_eq!(established["netns"], ns.inode);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn close_wait_dwell_matches_the_time_the_server_held_it() {
    let ns = Netns::new("closewait");
    let trace = Trace::events(&ns, &[]);
    let oc = open_close(&ns, "127.0.0.1:0", Duration::from_millis(300));
    let events = trace.stop_json();
    let (close_wait_exit, _) = assert_open_close(&events, &oc);
    assert!(state_is(&close_wait_exit, "CLOSE_WAIT", "LAST_ACK"));
    let dwell = close_wait_exit["dwell_us"].as_u64().unwrap();
    assert!(
        (300_000..450_000).contains(&dwell),
        "CLOSE_WAIT dwell {dwell} us"
    );
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn ipv6_open_close_gives_the_same_sequences() {
    let ns = Netns::new("v6");
    let trace = Trace::events(&ns, &[]);
    let oc = open_close(&ns, "[::1]:0", Duration::ZERO);
    let events = trace.stop_json();
    let (_, established) = assert_open_close(&events, &oc);
    assert_eq!(established["family"], "ipv6");
    assert_eq!(established["local"], oc.client.to_string());
}

/// Connects to a port nobody listens on; returns the error.
fn refused(ns: &Netns, port: u16) -> std::io::ErrorKind {
    ns.run(move || TcpStream::connect(("127.0.0.1", port)).unwrap_err().kind())
}

fn assert_refused(events: &[Value], port: u16) {
    let server = format!("127.0.0.1:{port}");
    let sent = the(events, "reset sent", |e| e["kind"] == "send_reset");
    assert_eq!(sent["reason"], "NO_SOCKET");
    assert_eq!(sent["local"], server.as_str());
    assert!(sent["state"].is_null() && sent["state_before"].is_null());
    let client = sent["remote"].as_str().unwrap();

    let got = the(events, "reset received", |e| e["kind"] == "recv_reset");
    assert_eq!(
        (got["state"].as_str(), got["local"].as_str()),
        (Some("SYN_SENT"), Some(client))
    );
    assert_eq!(got["remote"], server.as_str());
    let client_events = by_sock(events, &got["sock"]);
    assert_eq!(
        transitions(&client_events),
        ["CLOSE->SYN_SENT", "SYN_SENT->CLOSE"]
    );
    let kinds: Vec<&str> = client_events
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["state", "recv_reset", "state"],
        "the reset precedes the CLOSE"
    );
    assert_eq!(events.len(), 4, "{events:#?}");
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn connect_to_a_closed_port_is_a_no_socket_reset_received_in_syn_sent() {
    let ns = Netns::new("refused");
    let trace = Trace::events(&ns, &[]);
    assert_eq!(refused(&ns, 9), std::io::ErrorKind::ConnectionRefused);
    assert_refused(&trace.stop_json(), 9);
}

/// The one reset sent in `events`, with its reason and state before.
fn reset_sent(events: &[Value]) -> (String, String, String) {
    let sent = the(events, "reset sent", |e| e["kind"] == "send_reset");
    (
        sent["reason"].as_str().unwrap().to_string(),
        sent["state_before"].as_str().unwrap_or("null").to_string(),
        sent["local"].as_str().unwrap().to_string(),
    )
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn close_with_unread_data_resets_with_tcp_abort_on_close() {
    let ns = Netns::new("abort");
    let trace = Trace::events(&ns, &[]);
    let server = ns.run(|| {
        let l = listen("127.0.0.1:0");
        let (mut c, s) = connect_accept(&l);
        c.write_all(b"never read").unwrap();
        sleep(Duration::from_millis(50));
        drop(s); // unread data: the kernel aborts with a reset
        let mut buf = [0u8; 8];
        assert_eq!(
            c.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        l.local_addr().unwrap()
    });
    let events = trace.stop_json();
    let (reason, before, local) = reset_sent(&events);
    assert_eq!(
        (reason.as_str(), before.as_str()),
        ("TCP_ABORT_ON_CLOSE", "ESTABLISHED")
    );
    assert_eq!(local, server.to_string());
    let got = the(&events, "reset received", |e| e["kind"] == "recv_reset");
    assert_eq!(got["state"], "ESTABLISHED");
    assert_eq!(got["remote"], server.to_string());
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn linger_zero_close_resets_with_tcp_state() {
    let ns = Netns::new("linger");
    let trace = Trace::events(&ns, &[]);
    let client = ns.run(|| {
        let l = listen("127.0.0.1:0");
        let (c, _s) = connect_accept(&l);
        let sock = socket2::SockRef::from(&c);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        let addr = c.local_addr().unwrap();
        drop(c);
        sleep(Duration::from_millis(20));
        addr
    });
    let events = trace.stop_json();
    let (reason, before, local) = reset_sent(&events);
    assert_eq!(
        (reason.as_str(), before.as_str()),
        ("TCP_STATE", "ESTABLISHED")
    );
    assert_eq!(local, client.to_string());
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn dropped_final_acks_make_the_listener_retransmit_syn_acks() {
    let ns = Netns::new("synack");
    let listener = ns.run(|| listen("127.0.0.1:0"));
    let port = listener.local_addr().unwrap().port();
    // Drop every pure ACK to the listener on input: the handshake never
    // completes on the server side, which retransmits its SYN-ACK at ~1 s and
    // ~3 s. (A drop on output would count as never sent.)
    ns.nft(&format!(
        "table inet tcptrace_test {{\n chain input {{\n type filter hook input priority 0;\n \
         tcp dport {port} tcp flags & (syn | ack) == ack drop\n }}\n}}\n"
    ));
    let before = ns.netstat("TcpExt", "TCPSynRetrans");
    let trace = Trace::events(&ns, &[]);
    let client = ns.run(move || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sleep(Duration::from_millis(3_500));
        let addr = c.local_addr().unwrap();
        let _ = c.shutdown(Shutdown::Both);
        addr
    });
    let events = trace.stop_json();
    let retransmits = ns.netstat("TcpExt", "TCPSynRetrans") - before;
    let synacks: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "synack_retrans")
        .collect();
    assert_eq!(synacks.len() as u64, retransmits, "{events:#?}");
    assert_eq!(retransmits, 2, "1 s and 3 s after the first SYN-ACK");
    let counts: Vec<u64> = synacks
        .iter()
        .map(|e| e["retrans"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2]);
    for (e, min_us) in synacks.iter().zip([900_000, 2_700_000]) {
        assert_eq!(
            e["local"],
            format!("127.0.0.1:{port}"),
            "attributed to the listening port"
        );
        assert_eq!(e["remote"], client.to_string());
        let age = e["since_first_synack_us"].as_u64().unwrap();
        assert!(
            (min_us..min_us + 1_500_000).contains(&age),
            "since first SYN-ACK {age} us"
        );
    }
    drop(listener);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn classic_tracepoints_give_the_same_events_as_tp_btf() {
    let ns = Netns::new("classic");
    let trace = Trace::events(&ns, &["--hooks", "classic"]);
    assert!(
        trace
            .stderr_lines
            .iter()
            .any(|l| l.contains("tracepoint/inet_sock_set_state")),
        "{:?}",
        trace.stderr_lines
    );
    let oc = open_close(&ns, "127.0.0.1:0", Duration::ZERO);
    let events = trace.stop_json();
    assert_open_close(&events, &oc);

    let trace = Trace::events(&ns, &["--hooks", "classic"]);
    refused(&ns, 9);
    assert_refused(&trace.stop_json(), 9);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn port_and_state_filters_show_exactly_the_matching_events() {
    let ns = Netns::new("filter");
    let (a, b) = ns.run(|| {
        let (a, b) = (listen("127.0.0.1:0"), listen("127.0.0.1:0"));
        (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        )
    });
    let port_a = a.to_string();
    let by_port = Trace::events(&ns, &["--port", &port_a]);
    let by_state = Trace::events(&ns, &["--port", &port_a, "--state", "close-wait"]);
    let v6_only = Trace::events(&ns, &["-6"]);
    let runs = ns.run(move || {
        [a, b]
            .map(|port| {
                let listener = listen(&format!("127.0.0.1:{port}"));
                let (client, mut server) = connect_accept(&listener);
                let addr = client.local_addr().unwrap();
                drop(client);
                assert_eq!(server.read(&mut [0u8; 4]).unwrap(), 0);
                drop(server);
                addr
            })
            .to_vec()
    });
    let on_a = by_port.stop_json();
    // Client socket (5 transitions), accepted socket (5), listener (2).
    assert_eq!(on_a.len(), 12, "{on_a:#?}");
    let a_str = format!("127.0.0.1:{a}");
    assert!(
        on_a.iter()
            .all(|e| e["local"] == a_str.as_str() || e["remote"] == a_str.as_str())
    );
    assert!(on_a.iter().any(|e| e["local"] == runs[0].to_string()));
    assert!(!on_a.iter().any(|e| e["local"] == runs[1].to_string()));

    let close_wait = by_state.stop_json();
    let seen: Vec<String> = close_wait
        .iter()
        .map(|e| {
            format!(
                "{}->{}",
                e["old"].as_str().unwrap(),
                e["new"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(seen, ["ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK"]);
    assert!(close_wait.iter().all(|e| e["local"] == a_str.as_str()));

    assert_eq!(v6_only.stop_json().len(), 0);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn text_output_has_a_header_and_one_line_per_event() {
    let ns = Netns::new("text");
    let inode = ns.inode.to_string();
    let trace = Trace::start(&["events", "--netns", &inode], "tcptrace: tracing");
    refused(&ns, 9);
    let (out, stderr) = trace.stop();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{out}");
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[1].contains("CLOSE -> SYN_SENT"), "{out}");
    assert!(
        lines[2].contains("127.0.0.1:9") && lines[2].contains("reason=NO_SOCKET before=no-socket")
    );
    assert!(lines[3].contains("RST received") && lines[3].ends_with("in=SYN_SENT"));
    assert!(lines[4].contains("SYN_SENT -> CLOSE"));
    let summary = stderr.last().unwrap();
    assert!(summary.contains("4 shown, 0 lost"), "{summary}");
    assert!(summary.contains("send_reset 1, recv_reset 1"), "{summary}");
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn without_privileges_it_says_how_to_run_it() {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("events")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tcptrace: error: tcptrace needs root (or CAP_BPF and CAP_PERFMON) to load its BPF \
         programs: run it with sudo\n"
    );
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn events_of_alternating_namespaces_each_carry_their_own() {
    // Each CPU remembers the last namespace it saw (common.bpf.h:
    // net_inum): alternate two so that the memo keeps changing.
    const ROUNDS: usize = 20;
    let nss = [
        (Netns::new("memo-a"), 7001u16),
        (Netns::new("memo-b"), 7002),
    ];
    let trace = Trace::start(&["events", "--json"], "tcptrace: tracing");
    for _ in 0..ROUNDS {
        for (ns, port) in &nss {
            let port = *port;
            ns.run(move || {
                let l = listen(&format!("127.0.0.1:{port}"));
                let (c, mut s) = connect_accept(&l);
                drop(c);
                assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
            });
        }
    }
    let events = trace.stop_json();
    for (ns, port) in &nss {
        let port = *port;
        let of_ns: Vec<&Value> = events.iter().filter(|e| e["netns"] == ns.inode).collect();
        // Per round: the listener's 2 transitions and the connection's 10.
        assert_eq!(of_ns.len(), ROUNDS * 12, "namespace {}", ns.inode);
        for e in of_ns {
            let ends = [&e["local"], &e["remote"]].map(|a| {
                let a: SocketAddr = a.as_str().unwrap().parse().unwrap();
                a.port()
            });
            assert!(ends.contains(&port), "{e} is not of namespace {}", ns.inode);
        }
    }
}

/// `n` connections in `ns`, one after the other, each closed by the client:
/// 5 client and 5 server transitions each, plus the listener's 2.
fn open_close_n(ns: &Netns, n: usize) {
    ns.run(move || {
        let l = listen("127.0.0.1:0");
        for _ in 0..n {
            let (c, mut s) = connect_accept(&l);
            drop(c);
            assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
        }
    });
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn every_event_is_either_shown_or_counted_lost_with_a_tiny_ring() {
    const CONNECTIONS: usize = 300;
    let ns = Netns::new("lost");
    // One page of ring (36 records) drained once a second: a burst overflows
    // it unless the threshold wake-ups keep up. Either way, nothing vanishes.
    let trace = Trace::events(&ns, &["--ring-size", "4096", "--poll-interval", "1s"]);
    open_close_n(&ns, CONNECTIONS);
    let (out, stderr) = trace.stop();
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lost: u64 = records
        .iter()
        .filter(|r| r["kind"] == "lost")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    let shown = records.iter().filter(|r| r["kind"] == "state").count() as u64;
    // Per connection: 5 client and 5 server transitions; plus the listener's 2.
    assert_eq!(
        shown + lost,
        (CONNECTIONS * 10 + 2) as u64,
        "shown {shown}, lost {lost}"
    );
    let summary = stderr.last().unwrap();
    assert!(
        summary.contains(&format!("{shown} shown, {lost} lost")),
        "{summary}"
    );
    // Losses here can only be a full ring, and the warning says so.
    let warned = stderr
        .iter()
        .any(|l| l.contains("ring buffer full (raise --ring-size)"));
    assert_eq!(warned, lost > 0, "{stderr:?}");
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn a_ring_past_its_wakeup_threshold_is_drained_before_the_timer() {
    // 400 records of 120 bytes: past the wake-up threshold (a quarter of a
    // 64 KiB ring), never past the ring itself, so nothing can be lost.
    const CONNECTIONS: usize = 40;
    let ns = Netns::new("wake");
    let mut trace = Trace::events(&ns, &["--ring-size", "65536", "--poll-interval", "60s"]);
    let lines = trace.stdout_lines();
    open_close_n(&ns, CONNECTIONS);
    // The timer would drain in a minute: only a wake-up brings records now.
    let first = lines.recv_timeout(Duration::from_secs(10));
    assert!(
        first.is_ok(),
        "no record within 10 s: the reader was not woken"
    );
    let (_, stderr) = trace.stop();
    let records: Vec<Value> = first
        .into_iter()
        .chain(lines.iter())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let shown = records.iter().filter(|r| r["kind"] == "state").count();
    assert_eq!(shown, CONNECTIONS * 10 + 2, "{stderr:?}");
    assert!(records.iter().all(|r| r["kind"] != "lost"));
}

/// (ring buffers of `size` bytes, one-page ring buffers) a process holds, from fdinfo.
fn ring_buffers(pid: u32, size: u64) -> (usize, usize) {
    let infos: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    // BPF_MAP_TYPE_RINGBUF is 27 (include/uapi/linux/bpf.h).
    let rings: Vec<u64> = infos
        .iter()
        .filter(|i| {
            i.lines()
                .any(|l| l.split_whitespace().eq(["map_type:", "27"]))
        })
        .filter_map(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("max_entries:"))
                .map(|v| v.trim().parse().unwrap())
        })
        .collect();
    (
        rings.iter().filter(|s| **s == size).count(),
        rings.iter().filter(|s| **s == 4096).count(),
    )
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn two_rings_give_the_same_sequences_merged_by_time() {
    // Two rings of the asked size in use; the object's other two shrank to a page.
    sequences_over_rings(2);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn one_ring_gives_the_same_sequences() {
    // One ring goes through the reader's merge too; the other three shrank.
    sequences_over_rings(1);
}

/// Connections from two threads (so both CPUs write), traced with `rings`
/// 1 MiB rings: every socket's full sequence, in timestamp order.
fn sequences_over_rings(rings: usize) {
    let ns = Netns::new("rings");
    let trace = Trace::events(&ns, &["--rings", &rings.to_string(), "--ring-size", "1M"]);
    assert_eq!(ring_buffers(trace.pid(), 1 << 20), (rings, 4 - rings));
    // Spread the work over both CPUs so that both rings carry events.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            ns.spawn(|| {
                let mut done = Vec::new();
                for _ in 0..20 {
                    let l = listen("127.0.0.1:0");
                    let (c, mut s) = connect_accept(&l);
                    let client = c.local_addr().unwrap();
                    drop(c);
                    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
                    drop(s);
                    done.push(OpenClose {
                        client,
                        listener: l.local_addr().unwrap(),
                    });
                }
                done
            })
        })
        .collect();
    let done: Vec<OpenClose> = runs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let events = trace.stop_json();
    for oc in &done {
        assert_connection(&events, &oc.client.to_string(), &oc.listener.to_string());
    }
    assert_eq!(events.len(), 40 * 12);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn records_staged_on_a_cpu_that_goes_quiet_arrive_once_without_more_events() {
    const MORE: usize = 20;
    let ns = Netns::new("staged");
    let mut trace = Trace::events(&ns, &[]);
    let lines = trace.stdout_lines();
    let listener = ns.run(|| listen("127.0.0.1:0"));
    let one = |l: TcpListener| {
        ns.run(move || {
            let (c, mut s) = connect_accept(&l);
            drop(c);
            assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
            l
        })
    };
    // One connection: the listener's first event and 10 more, fewer than
    // a batch (32) even if they all fell on one CPU, so none is sent to a
    // ring while the namespace is quiet: only the reader taking them from
    // the stages can show them.
    let mut listener = one(listener);
    let first: Vec<String> = (0..11)
        .map_while(|_| lines.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    assert_eq!(first.len(), 11, "{first:#?}");
    // Connections with pauses longer than the poll interval: each drain
    // takes what the stages hold, and the batches sent later carry those
    // records again; the reader must skip them.
    for _ in 0..MORE {
        listener = one(listener);
        sleep(Duration::from_millis(30));
    }
    drop(listener);
    let _ = trace.stop();
    let events: Vec<Value> = first
        .into_iter()
        .chain(lines.iter())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    assert_eq!(events.len(), (1 + MORE) * 10 + 2, "each event once");
    let actives: Vec<&Value> = events
        .iter()
        .filter(|e| state_is(e, "SYN_SENT", "ESTABLISHED"))
        .collect();
    assert_eq!(actives.len(), 1 + MORE);
    for est in actives {
        assert_eq!(
            transitions(&by_sock(&events, &est["sock"])),
            CLIENT_CLOSES_FIRST
        );
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // take valid pointers to it; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn sockets_whose_events_move_between_cpus_keep_their_order() {
    // Each CPU's batches go to its own ring.
    sockets_moving_between_cpus(&[], 100);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn sockets_whose_events_move_between_cpus_keep_their_order_in_one_ring() {
    // Both CPUs' batches go to one ring, not in order between the CPUs.
    sockets_moving_between_cpus(&["--rings", "1"], 100);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn records_taken_from_stages_every_millisecond_come_out_once_each() {
    // A drain every millisecond takes records from stages the kernel is
    // filling and sending at the same time: each record must come out once,
    // whether taken from its stage or read from its batch.
    sockets_moving_between_cpus(&["--poll-interval", "1ms"], 300);
}

/// The client on CPU 0, the server on CPU 1: a loopback segment is
/// processed on the CPU that sends it, so every socket has events staged on
/// both CPUs. Every socket's sequence must come out exact.
fn sockets_moving_between_cpus(extra: &[&str], connections: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(
        cpus >= 2,
        "this test needs two CPUs, the machine has {cpus}"
    );
    let ns = Netns::new("cpus");
    let trace = Trace::events(&ns, extra);
    let listener = ns.run(|| listen("127.0.0.1:0"));
    let addr = listener.local_addr().unwrap();
    let server = ns.spawn(move || {
        pin_to(1);
        for _ in 0..connections {
            let (mut s, _) = listener.accept().unwrap();
            assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
        }
    });
    let clients = ns.run(move || {
        pin_to(0);
        (0..connections)
            .map(|_| {
                let c = TcpStream::connect(addr).unwrap();
                c.local_addr().unwrap()
            })
            .collect::<Vec<_>>()
    });
    server.join().unwrap();
    // Under load a loopback segment can be dropped (a full backlog queue),
    // and a closing socket then waits for a retransmit: stop only once no
    // socket of the namespace is still closing (FIN_WAIT1 04, CLOSING 0B,
    // LAST_ACK 09 in /proc/net/tcp).
    let closing = || {
        ns.run(|| std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap())
            .lines()
            .skip(1)
            .any(|l| matches!(l.split_whitespace().nth(3), Some("04" | "0B" | "09")))
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || !closing()),
        "sockets still closing after 10 s"
    );
    let (out, stderr) = trace.stop();
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Per connection 5 client and 5 server transitions, and the listener's
    // 2 (a burst may overflow the accept queue: SYN retransmits are not
    // counted).
    let states = events.iter().filter(|e| e["kind"] == "state").count();
    assert_eq!(states, connections * 10 + 2, "{stderr:?}");
    let listener = addr.to_string();
    for client in clients.iter().map(ToString::to_string) {
        assert_connection(&events, &client, &listener);
    }
}

/// The client at `client` that connected to `listener` and closed first,
/// and the server's accepted socket: each one's full sequence, in
/// timestamp order. Matched by both ends: the kernel may give two clients
/// the same local port when their listeners differ.
fn assert_connection(events: &[Value], client: &str, listener: &str) {
    let est = the(events, "client ESTABLISHED", |e| {
        state_is(e, "SYN_SENT", "ESTABLISHED") && e["local"] == client && e["remote"] == listener
    });
    let child = the(events, "server child", |e| {
        state_is(e, "LISTEN", "SYN_RECV") && e["remote"] == client && e["local"] == listener
    });
    for (sock, expected) in [
        (&est["sock"], CLIENT_CLOSES_FIRST),
        (&child["sock"], SERVER_CLOSES_SECOND),
    ] {
        let sock_events = by_sock(events, sock);
        assert_eq!(transitions(&sock_events), expected);
        let ts: Vec<u64> = sock_events
            .iter()
            .map(|e| e["ts_ns"].as_u64().unwrap())
            .collect();
        assert!(ts.is_sorted(), "merged by time: {ts:?}");
    }
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn the_kernel_port_filter_keeps_active_resets_of_the_port() {
    let ns = Netns::new("portrst");
    let listener = ns.run(|| listen("127.0.0.1:0"));
    let port = listener.local_addr().unwrap().port().to_string();
    let trace = Trace::events(&ns, &["--port", &port]);
    ns.run(move || {
        let (mut c, s) = connect_accept(&listener);
        c.write_all(b"unread").unwrap();
        sleep(Duration::from_millis(50));
        drop(s); // abort: the reset is sent after the socket released its port
        let _ = c.read(&mut [0u8; 8]);
    });
    let events = trace.stop_json();
    let (reason, before, _) = reset_sent(&events);
    assert_eq!(
        (reason.as_str(), before.as_str()),
        ("TCP_ABORT_ON_CLOSE", "ESTABLISHED")
    );
}

/// Names of the BPF programs `pid` holds (through program and link fds), as
/// bpftool reports them.
fn held_program_names(pid: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    ids.iter()
        .map(|id| {
            let out = std::process::Command::new("bpftool")
                .args(["prog", "show", "id", &id.to_string(), "--json"])
                .output()
                .expect("run bpftool (cargo xtask setup installs it)");
            let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
            v["name"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn the_state_catcher_is_attached_beside_the_state_program() {
    let ns = Netns::new("catcher");
    let trace = Trace::events(&ns, &[]);
    let mut names = held_program_names(trace.pid());
    names.sort();
    assert_eq!(
        names,
        [
            "catch_inet_sock_set_state",
            "handle_inet_sock_set_state",
            "handle_tcp_receive_reset",
            "handle_tcp_retransmit_skb",
            "handle_tcp_retransmit_synack",
            "handle_tcp_send_reset",
        ]
    );
    // With both attached, every state event still comes out once:
    // client_closes_first_gives_both_full_sequences counts them exactly.
    drop(trace);
}
