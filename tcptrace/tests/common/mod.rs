//! Harness for the kernel tests: private network namespaces, real sockets
//! inside them, and the real `tcptrace` binary tracing them. Everything created
//! here is removed on drop, so a failing test leaves nothing behind.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A network namespace with loopback up, deleted on drop (with its nft rules).
pub struct Netns {
    pub name: String,
    pub inode: u64,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tcptrace-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // Owned from here on, so a failure below still deletes it.
        let mut ns = Self { inode: 0, name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .unwrap()
            .ino();
        ns
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Loads an nft ruleset into the namespace (removed with it).
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), ruleset.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(
            child.wait().unwrap().success(),
            "nft -f failed for:\n{ruleset}"
        );
    }

    /// A counter from the namespace's /proc/net/netstat, e.g. ("TcpExt", "TCPSynRetrans").
    pub fn netstat(&self, group: &'static str, name: &'static str) -> u64 {
        self.run(move || read_counter("netstat", group, name))
    }

    /// A counter from the namespace's /proc/net/snmp, e.g. ("Tcp", "OutRsts").
    pub fn snmp(&self, group: &'static str, name: &'static str) -> u64 {
        self.run(move || read_counter("snmp", group, name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn read_counter(file: &str, group: &str, name: &str) -> u64 {
    // /proc/thread-self/net reflects this thread's namespace.
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let (heads, vals) = (pair[0], pair[1]);
        if heads.starts_with(&format!("{group}:")) {
            let i = heads.split_whitespace().position(|h| h == name).unwrap();
            return vals.split_whitespace().nth(i).unwrap().parse().unwrap();
        }
    }
    panic!("{group}:{name} not in /proc/net/{file}")
}

pub fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `tcptrace events --json`, killed on drop.
pub struct Trace {
    child: Child,
    stderr: mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

impl Trace {
    /// Starts `tcptrace events --json --netns <ns> <extra>` and waits until it traces.
    pub fn events(ns: &Netns, extra: &[&str]) -> Self {
        let inode = ns.inode.to_string();
        let mut args = vec!["events", "--json", "--netns", &inode];
        args.extend_from_slice(extra);
        Self::start(&args, "tcptrace: tracing")
    }

    /// Starts tcptrace with `args` and waits for a stderr line containing `ready`.
    pub fn start(args: &[&str], ready: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcptrace");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut trace = Self {
            child,
            stderr: rx,
            stderr_lines: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match trace.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(ready);
                    trace.stderr_lines.push(line);
                    if done {
                        return trace;
                    }
                }
                Err(e) => panic!("tcptrace did not start ({e}): {:?}", trace.stderr_lines),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT, waits for exit, and returns stdout.
    pub fn stop(self) -> (String, Vec<String>) {
        // Let the last records reach the ring and one poll drain them.
        thread::sleep(Duration::from_millis(100));
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGINT) };
        self.finish()
    }

    /// Hands over stdout as lines, as they come; `stop` and `finish` then
    /// return no stdout of their own.
    pub fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        let out = self.child.stdout.take().expect("stdout not yet taken");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Waits for tcptrace to exit by itself (e.g. `watch --once`) and returns stdout.
    pub fn finish(mut self) -> (String, Vec<String>) {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        let status = self.child.wait().unwrap();
        let mut lines = std::mem::take(&mut self.stderr_lines);
        lines.extend(self.stderr.iter());
        assert!(status.success(), "tcptrace exited with {status}: {lines:?}");
        (out, lines)
    }

    /// Stops and parses the JSON lines.
    pub fn stop_json(self) -> Vec<Value> {
        let (out, _) = self.stop();
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of one socket, by its local address.
pub fn of_local<'a>(events: &'a [Value], local: &SocketAddr) -> Vec<&'a Value> {
    let l = local.to_string();
    events.iter().filter(|e| e["local"] == l.as_str()).collect()
}

/// "OLD->NEW" for each state event.
pub fn transitions(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "state")
        .map(|e| {
            format!(
                "{}->{}",
                e["old"].as_str().unwrap(),
                e["new"].as_str().unwrap()
            )
        })
        .collect()
}

/// Transitions of the events sharing one socket id (cookie).
pub fn by_sock<'a>(events: &'a [Value], sock: &Value) -> Vec<&'a Value> {
    events.iter().filter(|e| &e["sock"] == sock).collect()
}

/// A listener on `addr` (port 0 picks one).
pub fn listen(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap()
}

/// Connects and waits for the server side to accept.
pub fn connect_accept(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Waits until `cond` holds, polling, for at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
