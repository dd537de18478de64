//! Kernel test of `tcptrace sockets`: the CLOSE_WAIT sockets a test leaves
//! behind, found with their owner and exact ages from a running daemon.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Netns, Trace, connect_accept, listen};
use serde_json::Value;

fn sockets(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("sockets")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: a daemon, held sockets, five queries"
)]
fn sockets_names_the_owner_and_exact_age_of_close_wait_sockets() {
    let ns = Netns::new("sockets");
    let inode = ns.inode.to_string();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen_at = format!("127.0.0.1:{port}");
    let daemon = Trace::start(
        &[
            "daemon",
            "--interval",
            "1h",
            "--listen",
            &listen_at,
            "--netns",
            &inode,
            "--output",
            "/dev/null",
        ],
        "metrics on http://",
    );
    let (listener, held, since) = ns.run(|| {
        let l = listen("127.0.0.1:0");
        let mut held: Vec<(TcpStream, TcpStream)> = Vec::new();
        for _ in 0..6 {
            let (c, mut s) = connect_accept(&l);
            c.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(
                s.read(&mut [0u8; 4]).unwrap(),
                0,
                "the server saw the FIN: CLOSE_WAIT"
            );
            held.push((c, s));
        }
        (l, held, Instant::now())
    });
    let service = listener.local_addr().unwrap().port();
    std::thread::sleep(Duration::from_millis(1_200));
    let comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string();

    let rows = sockets(&[
        "--daemon",
        &listen_at,
        "--netns",
        &inode,
        "--state",
        "CLOSE_WAIT",
    ]);
    let waited = since.elapsed().as_secs_f64();
    assert_eq!(rows.len(), 6, "{rows:#?}");
    for r in &rows {
        assert_eq!(
            (r["port"].as_u64(), r["direction"].as_str()),
            (Some(u64::from(service)), Some("in"))
        );
        assert_eq!(r["pid"], std::process::id());
        assert_eq!(r["comm"], comm.as_str());
        assert_eq!(r["exact"], true);
        let age = r["age_s"].as_f64().unwrap();
        assert!(age >= 1.2 && age <= waited, "age {age}, held {waited}");
    }
    // The clients half-closed: FIN_WAIT2, outbound to the service port.
    let clients = sockets(&[
        "--daemon",
        &listen_at,
        "--netns",
        &inode,
        "--state",
        "FIN_WAIT2",
        "--port",
        &service.to_string(),
    ]);
    assert_eq!(clients.len(), 6);
    assert!(
        clients
            .iter()
            .all(|r| r["direction"] == "out" && r["exact"] == true)
    );

    assert_eq!(
        sockets(&[
            "--daemon",
            &listen_at,
            "--netns",
            &inode,
            "--state",
            "close_wait",
            "--older-than",
            "1s"
        ])
        .len(),
        6
    );
    assert_eq!(
        sockets(&[
            "--daemon",
            &listen_at,
            "--netns",
            &inode,
            "--state",
            "close_wait",
            "--older-than",
            "1h"
        ])
        .len(),
        0
    );
    // Without a daemon the sockets are still found, with their owner, age unknown.
    let bare = sockets(&["--no-daemon", "--netns", &inode, "--state", "CLOSE_WAIT"]);
    assert_eq!(bare.len(), 6);
    assert!(
        bare.iter()
            .all(|r| r["age_s"].is_null() && r["pid"] == std::process::id())
    );
    // SAFETY: kill on our child's pid.
    unsafe { libc::kill(daemon.pid().cast_signed(), libc::SIGTERM) };
    daemon.finish();
    drop((listener, held));
}
