//! Kernel tests of the full-screen `tcptrace watch` in a real pseudo-terminal.
//!
//! tmux runs the view at a fixed size in a shell script that records the
//! terminal settings before it and prints them after it. The test reads the
//! screen with `capture-pane`, types with `send-keys`, and checks exact
//! numbers against a workload in a private namespace: the table, the details
//! of a port, the dwell-state key, and the terminal given back sane after `q`
//! and after SIGTERM.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Netns, connect_accept};

/// The port that holds sockets in CLOSE_WAIT.
const LISTEN_PORT: u16 = 8080;
/// Its listen() backlog, shown as the accept queue's limit.
const BACKLOG: i32 = 16;
/// Sockets of `LISTEN_PORT` left in CLOSE_WAIT: the clients closed, the
/// server never does.
const HELD: usize = 7;
/// A port nothing listens on.
const CLOSED_PORT: u16 = 9;
/// Connects to `CLOSED_PORT`, each refused with a reset.
const REFUSED: usize = 12;
/// Pause between two refused connects.
const TRICKLE: Duration = Duration::from_millis(100);
/// The longest the workload holds its sockets, should a test hang.
const HOLD_LIMIT: Duration = Duration::from_mins(2);
/// The longest any screen or exit is waited for.
const WAIT: Duration = Duration::from_secs(15);
const WIDTH: &str = "180";
const HEIGHT: &str = "45";
/// The tmux session (one per server).
const SESSION: &str = "tui";

/// Runs `tcptrace "$@"` as a terminal program, then prints its exit status,
/// whether the terminal settings are those it started with, and `stty -a`.
/// Exits with tcptrace's status, which tmux keeps as `pane_dead_status`.
const SCRIPT: &str = r#"before=$(stty -g)
env TERM=xterm-256color "$@"
status=$?
after=$(stty -g)
echo "tcptrace exit status $status"
if [ "$before" = "$after" ]; then
    echo "terminal settings restored"
else
    echo "terminal settings changed: $before -> $after"
fi
stty -a
exit $status
"#;

/// A tmux server of its own (`tmux -L tcptrace-<pid>-<n>`) running one
/// `tcptrace` in a 180x45 pane. On drop the server is killed, which hangs up
/// the pane, and its socket removed; a tcptrace still alive after that is
/// killed by its pid.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `tcptrace <args>` in a new session. Panes stay after their
    /// program exits (`remain-on-exit`), so its last screen and exit status
    /// can be read.
    fn start(args: &[&str]) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tmux = Self {
            socket: format!(
                "tcptrace-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let mut cmd = vec![
            "start-server",
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            WIDTH,
            "-y",
            HEIGHT,
            "sh",
            "-c",
            SCRIPT,
            "sh",
            env!("CARGO_BIN_EXE_tcptrace"),
        ];
        cmd.extend_from_slice(args);
        tmux.cmd(&cmd);
        tmux
    }

    fn try_cmd(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("tmux")
            .args(["-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .output()
            .map_err(|e| format!("tmux: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The visible screen, trailing blanks trimmed.
    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", SESSION])
    }

    /// The main screen's history and the visible screen.
    fn screen_with_history(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-S", "-", "-t", SESSION])
    }

    /// A format variable of the pane, e.g. `pane_dead`.
    fn var(&self, name: &str) -> String {
        self.cmd(&[
            "display-message",
            "-p",
            "-t",
            SESSION,
            &format!("#{{{name}}}"),
        ])
        .trim()
        .to_string()
    }

    /// Keys by tmux name (`Down`, `Enter`, `Escape`, `q`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.cmd(&args);
    }

    /// Characters typed as they are.
    fn type_text(&self, text: &str) {
        self.cmd(&["send-keys", "-t", SESSION, "-l", text]);
    }

    /// Polls the screen until `found` returns something for a screen that
    /// is also the same in two captures in a row, for at most `WAIT`. A
    /// frame reaches the terminal in several writes, so one capture can hold
    /// half of the old frame and half of the new.
    fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut previous = String::new();
        loop {
            let screen = self.screen();
            if screen == previous
                && let Some(t) = found(&screen)
            {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after {WAIT:?}; the screen:\n{screen}"
            );
            previous = screen;
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// (port, direction) of the table row drawn in reverse video: the selection.
    fn selected(&self) -> Option<(String, String)> {
        let screen = self.cmd(&["capture-pane", "-p", "-e", "-t", SESSION]);
        let row = without_escapes(screen.lines().find(|l| starts_reversed(l))?);
        let mut words = row.split_whitespace().map(String::from);
        Some((words.next()?, words.next()?))
    }

    /// Waits until the selection is on row (port, dir).
    fn wait_selected(&self, port: u16, dir: &str) {
        let want = Some((port.to_string(), dir.to_string()));
        let deadline = Instant::now() + WAIT;
        loop {
            let selected = self.selected();
            if selected == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the selection is on {selected:?}, not {want:?}; the screen:\n{}",
                self.cmd(&["capture-pane", "-p", "-e", "-t", SESSION])
                    .replace('\x1b', "^[")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the pane's script has ended and returns tcptrace's exit
    /// status as the script printed it.
    ///
    /// The pane is dead once its pty has closed, i.e. once the script and
    /// everything it started have exited. tmux before 3.5 can miss the
    /// SIGCHLD and then never learns `pane_dead_status`, so the status is
    /// read from the script's output, and checked against tmux's when known.
    fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + WAIT;
        while self.var("pane_dead") != "1" {
            assert!(
                Instant::now() < deadline,
                "the pane still runs {WAIT:?} later ({}); the screen:\n{}",
                holders(&self.var("pane_tty")),
                self.screen()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let all = self.screen_with_history();
        // Anywhere in a line: a terminal left raw does not return the carriage.
        let status: String = all
            .split_once("tcptrace exit status ")
            .unwrap_or_else(|| panic!("no exit status on the screen:\n{all}"))
            .1
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let status: i32 = status
            .parse()
            .unwrap_or_else(|e| panic!("exit status {status:?}: {e}\n{all}"));
        let known = self.var("pane_dead_status");
        if !known.is_empty() {
            assert_eq!(known, status.to_string(), "the script's own exit status");
        }
        status
    }

    /// The pid of the tcptrace the pane's shell runs, if it runs.
    fn tcptrace_pid(&self) -> Option<i32> {
        let shell: i32 = self
            .try_cmd(&["display-message", "-p", "-t", SESSION, "#{pane_pid}"])
            .ok()?
            .trim()
            .parse()
            .ok()?;
        child_named(shell, "tcptrace")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let tcptrace = self.tcptrace_pid();
        let _ = self.try_cmd(&["kill-server"]);
        // The server leaves its socket behind; -L names it under here.
        let dir = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(
            std::path::Path::new(&dir).join(format!("tmux-{uid}/{}", self.socket)),
        );
        if let Some(pid) = tcptrace {
            // The hangup ends it; if it somehow does not, SIGKILL does.
            let gone = common::wait_until(Duration::from_secs(2), || !alive(pid));
            if !gone {
                // SAFETY: kill on the pid of a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// True if `line` begins in reverse video: one of the SGR sequences before
/// its first character has the parameter 7 (`ESC[7m`, `ESC[0;7m`).
fn starts_reversed(line: &str) -> bool {
    let mut rest = line;
    while let Some(seq) = rest.strip_prefix("\x1b[") {
        let Some(end) = seq.find(|c: char| c.is_ascii_alphabetic()) else {
            return false;
        };
        if seq[end..].starts_with('m') && seq[..end].split(';').any(|p| p == "7") {
            return true;
        }
        rest = &seq[end + 1..];
    }
    false
}

/// `line` without its escape sequences (`ESC [ ... letter`).
fn without_escapes(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            out.push(c);
        }
    }
    out
}

/// The child of `parent` whose command name is `comm`.
fn child_named(parent: i32, comm: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                    return false;
                };
                let ppid = stat[close + 1..].split_whitespace().nth(1);
                &stat[open + 1..close] == comm && ppid == Some(parent.to_string().as_str())
            })
        })
}

/// The processes that have `tty` open, as "pid comm" (for failure messages).
fn holders(tty: &str) -> String {
    let mut found = Vec::new();
    for pid in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let fds = pid.path().join("fd");
        let holds = std::fs::read_dir(fds)
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == tty));
        if holds {
            let comm = std::fs::read_to_string(pid.path().join("comm")).unwrap_or_default();
            found.push(format!(
                "{} {}",
                pid.file_name().to_string_lossy(),
                comm.trim()
            ));
        }
    }
    format!("{tty} held by {found:?}")
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        state != Some("Z")
    })
}

/// What the workload tells the test once its sockets are in place.
struct Held {
    /// The clients' addresses, i.e. the remote ends of the CLOSE_WAIT sockets.
    clients: Vec<String>,
    /// The command name of the thread that called listen().
    comm: String,
    /// When the last socket entered CLOSE_WAIT.
    since: Instant,
}

/// In the namespace: a listener on `LISTEN_PORT` holding `HELD` sockets in
/// CLOSE_WAIT, then `REFUSED` connects to `CLOSED_PORT`, one every `TRICKLE`.
/// The sockets stay until the workload is dropped, or at most `HOLD_LIMIT`.
struct Workload {
    held: Held,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Workload {
    fn start(ns: &Netns) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = ns.spawn(move || {
            let comm = std::fs::read_to_string("/proc/thread-self/comm")
                .map_err(|e| format!("comm: {e}"))?
                .trim_end()
                .to_string();
            let listener = listener(LISTEN_PORT).map_err(|e| format!("listen: {e}"))?;
            let mut held = Vec::new();
            let mut clients = Vec::new();
            for _ in 0..HELD {
                let (client, mut server) = connect_accept(&listener);
                clients.push(client.local_addr().unwrap().to_string());
                drop(client);
                // The client's FIN has arrived: the server is in CLOSE_WAIT.
                match server.read(&mut [0u8; 4]) {
                    Ok(0) => held.push(server),
                    other => return Err(format!("expected EOF, got {other:?}")),
                }
            }
            let since = Instant::now();
            ready_tx
                .send(Held {
                    clients,
                    comm,
                    since,
                })
                .map_err(|e| e.to_string())?;
            for i in 0..REFUSED {
                match TcpStream::connect(("127.0.0.1", CLOSED_PORT)) {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                    other => return Err(format!("connect {i} to :{CLOSED_PORT}: {other:?}")),
                }
                if stop_rx.recv_timeout(TRICKLE) != Err(RecvTimeoutError::Timeout) {
                    return Ok(());
                }
            }
            let _ = stop_rx.recv_timeout(HOLD_LIMIT);
            drop((listener, held));
            Ok(())
        });
        let Ok(held) = ready_rx.recv_timeout(WAIT) else {
            drop(stop_tx);
            let why = if thread.is_finished() {
                format!("{:?}", thread.join())
            } else {
                format!("still busy after {WAIT:?}")
            };
            panic!("the workload did not start: {why}");
        };
        Self {
            held,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Closes everything and checks that the workload ran as planned.
    fn finish(mut self) {
        drop(self.stop.take());
        let thread = self.thread.take().unwrap();
        thread.join().expect("workload panicked").unwrap();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener on 127.0.0.1:`port` with a backlog of `BACKLOG`.
fn listener(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// The per-port table on a screen: the header's column names and each row's
/// cells. Every cell is one word, so a row splits into as many words as the
/// header; `None` if one does not (a frame half drawn, or a layout bug).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(screen: &str) -> Option<Self> {
        let mut lines = screen
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("PORT DIR LISTEN"));
        let header: Vec<String> = lines.next()?.split_whitespace().map(String::from).collect();
        let rows = lines
            .take_while(|l| !l.trim().is_empty())
            .map(|l| {
                let cells: Vec<String> = l.split_whitespace().map(String::from).collect();
                (cells.len() == header.len()).then_some(cells)
            })
            .collect::<Option<_>>()?;
        Some(Self { header, rows })
    }

    /// (port, direction) of each row, in order.
    fn keys(&self) -> Vec<(String, String)> {
        self.rows
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }

    /// The cell of row (port, dir) in column `col`.
    fn cell(&self, port: u16, dir: &str, col: &str) -> Option<&str> {
        let i = self.header.iter().position(|h| h == col)?;
        let port = port.to_string();
        self.rows
            .iter()
            .find(|r| r[0] == port && r[1] == dir)
            .map(|r| r[i].as_str())
    }

    /// Asserts the cells of row (port, dir), column by column.
    fn assert_row(&self, port: u16, dir: &str, want: &[(&str, &str)], screen: &str) {
        for (col, value) in want {
            assert_eq!(
                self.cell(port, dir, col),
                Some(*value),
                "port {port} {dir}, column {col}; the screen:\n{screen}"
            );
        }
    }
}

/// Columns of counts, all 0 unless `nonzero` says otherwise.
fn counts<'a>(nonzero: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let all = [
        "SYN_S", "SYN_R", "ESTAB", "FIN_W1", "FIN_W2", "TIME_W", "CLOSE_W", "LAST_ACK", "CLOSING",
        "TRANS", "SA_RETX", "RST_OUT", "RST_IN",
    ];
    all.iter()
        .map(|c| {
            nonzero
                .iter()
                .find(|(n, _)| n == c)
                .copied()
                .unwrap_or((c, "0"))
        })
        .collect()
}

/// A duration as the view prints it (`85µs`, `1.5ms`, `312ms`, `4.2s`, `59s`),
/// in seconds; `None` for anything else, `-` and `≥` lower bounds included.
fn seconds(text: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = text.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn status_line(screen: &str) -> &str {
    screen.lines().nth(1).unwrap_or("")
}

/// Starts the view on the namespace and waits for its first snapshot, so
/// that everything the workload does from then on is traced.
fn start_view(ns: &Netns) -> Tmux {
    let inode = ns.inode.to_string();
    let tmux = Tmux::start(&["watch", "--netns", &inode, "--interval", "500ms"]);
    tmux.wait_for("first snapshot", |s| {
        let first = s.lines().next()?;
        (first.starts_with("tcptrace  ") && first.contains("  events ")).then_some(())
    });
    tmux
}

/// Waits until the table shows everything the workload did, then checks
/// every row exactly; returns the screen.
fn wait_for_workload(tmux: &Tmux) -> String {
    let (table, screen) = tmux.wait_for("table with the workload's final counts", |s| {
        let t = Table::parse(s)?;
        let done = t.cell(LISTEN_PORT, "in", "CLOSE_W") == Some("7")
            && t.cell(LISTEN_PORT, "out", "FIN_W2") == Some("7")
            && t.cell(CLOSED_PORT, "in", "RST_OUT") == Some("12")
            && t.cell(CLOSED_PORT, "out", "RST_IN") == Some("12");
        done.then(|| (t, s.to_string()))
    });
    assert_eq!(
        table.keys(),
        [
            (CLOSED_PORT, "in"),
            (CLOSED_PORT, "out"),
            (LISTEN_PORT, "in"),
            (LISTEN_PORT, "out"),
        ]
        .map(|(p, d)| (p.to_string(), d.to_string())),
        "rows; the screen:\n{screen}"
    );
    let status = status_line(&screen);
    assert_eq!(
        status, "sort PORT ↑  dwell ESTABLISHED  ports all  dir all",
        "{screen}"
    );
    // Port 8080 in: the listener's CLOSE -> LISTEN, then per connection
    // LISTEN -> SYN_RECV -> ESTABLISHED -> CLOSE_WAIT.
    let backlog = format!("0/{BACKLOG}");
    table.assert_row(
        LISTEN_PORT,
        "in",
        &[
            ("LISTEN", backlog.as_str()),
            ("oldest", "-"),
            ("RST_REASON", "-"),
        ],
        &screen,
    );
    table.assert_row(
        LISTEN_PORT,
        "in",
        &counts(&[("CLOSE_W", "7"), ("TRANS", "22")]),
        &screen,
    );
    // ESTABLISHED ended 7 times: its dwell has numbers, in order.
    let dwell: Vec<f64> = ["p50", "p99", "max"]
        .iter()
        .map(|c| {
            let text = table.cell(LISTEN_PORT, "in", c).unwrap();
            seconds(text).unwrap_or_else(|| panic!("{c} {text:?}; the screen:\n{screen}"))
        })
        .collect();
    assert!(
        dwell[0] <= dwell[1] && dwell[1] <= dwell[2] && dwell[2] < 1.0,
        "p50 <= p99 <= max < 1 s: {dwell:?}; the screen:\n{screen}"
    );
    // Port 8080 out: CLOSE -> SYN_SENT -> ESTABLISHED -> FIN_WAIT1 ->
    // FIN_WAIT2 -> CLOSE, the orphaned FIN_WAIT2 kept by a timewait socket.
    table.assert_row(
        LISTEN_PORT,
        "out",
        &[("LISTEN", "-"), ("oldest", "-")],
        &screen,
    );
    table.assert_row(
        LISTEN_PORT,
        "out",
        &counts(&[("FIN_W2", "7"), ("TRANS", "35")]),
        &screen,
    );
    // Port 9: resets sent for no socket, received in SYN_SENT.
    table.assert_row(
        CLOSED_PORT,
        "in",
        &[("LISTEN", "-"), ("p50", "-"), ("RST_REASON", "NO_SOCKET")],
        &screen,
    );
    table.assert_row(CLOSED_PORT, "in", &counts(&[("RST_OUT", "12")]), &screen);
    table.assert_row(
        CLOSED_PORT,
        "out",
        &[("LISTEN", "-"), ("p50", "-"), ("RST_REASON", "-")],
        &screen,
    );
    table.assert_row(
        CLOSED_PORT,
        "out",
        &counts(&[("TRANS", "24"), ("RST_IN", "12")]),
        &screen,
    );
    screen
}

/// The rows of a table in the details whose header starts with the words
/// `header`, up to a blank line or the footer.
fn section<'a>(screen: &'a str, header: &[&str]) -> Vec<&'a str> {
    screen
        .lines()
        .skip_while(|l| {
            !l.split_whitespace()
                .take(header.len())
                .eq(header.iter().copied())
        })
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Esc back"))
        .collect()
}

/// Checks the details of port 8080 in against the workload.
fn assert_details(screen: &str, ns: &Netns, held: &Held) {
    let line = |prefix: &str| {
        screen
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}; the screen:\n{screen}"))
    };
    let summary = line("port 8080 in  ");
    for part in [
        &format!("listening, accept queue 0/{BACKLOG}  ") as &str,
        "  transitions 22 (",
        "  SYN-ACK retrans 0 (",
        "  resets sent 0 (",
        "  received 0 (",
        "  retransmits 0",
    ] {
        assert!(summary.contains(part), "{part:?} in {summary:?}");
    }
    // Time in state: every state the port's sockets met, in order, with
    // exact counts. CLOSE_WAIT has 7 now and no stay that ended.
    let states = section(screen, &["STATE", "NOW", "OLDEST", "ENTERED"]);
    let words: Vec<Vec<&str>> = states
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<&str> = words.iter().map(|w| w[0]).collect();
    assert_eq!(
        names,
        ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "CLOSE", "LISTEN"],
        "{screen}"
    );
    // STATE NOW (OLDEST) ENTERED SAMPLES UNKNOWN ... NEXT
    let (syn_recv, established, close_wait, listen) = (&words[0], &words[1], &words[2], &words[4]);
    assert_eq!(
        (syn_recv[1], syn_recv[2], &syn_recv[3..6]),
        ("0", "-", &["7", "7", "0"][..])
    );
    assert!(states[0].ends_with(" ESTABLISHED 7"), "{}", states[0]);
    assert_eq!(
        (established[1], established[2], &established[3..6]),
        ("0", "-", &["7", "7", "0"][..])
    );
    assert!(states[1].ends_with(" CLOSE_WAIT 7"), "{}", states[1]);
    assert_eq!(close_wait[1], "7", "{}", states[2]);
    assert!(seconds(close_wait[2]).is_some(), "exact age: {}", states[2]);
    assert_eq!(
        &close_wait[3..],
        ["7", "0", "0", "-", "-", "-", "-"],
        "{}",
        states[2]
    );
    assert_eq!((listen[1], &listen[3..6]), ("1", &["1", "0", "0"][..]));
    assert!(states[4].ends_with(" SYN_RECV 7"), "{}", states[4]);
    for part in [
        "ESTABLISHED dwell histogram (d/D: state)",
        "completed 7  failed 0  SYN-ACK retrans 0 (0/s)",
        "resets sent 0 (0/s)",
        "resets received 0 (0/s)",
    ] {
        assert!(screen.contains(part), "{part:?}; the screen:\n{screen}");
    }

    // The oldest sockets: the 7 held, owned by this process.
    let oldest = section(
        screen,
        &["STATE", "AGE", "LOCAL", "REMOTE", "PID", "COMM", "NETNS"],
    );
    assert_eq!(oldest.len(), HELD, "oldest sockets; the screen:\n{screen}");
    let pid = std::process::id().to_string();
    let inode = ns.inode.to_string();
    let held_for = held.since.elapsed().as_secs_f64();
    let mut remotes = Vec::new();
    for l in &oldest {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.len(), 7, "{l:?}");
        let local = format!("127.0.0.1:{LISTEN_PORT}");
        assert_eq!(
            (w[0], w[2], w[4], w[5], w[6]),
            (
                "CLOSE_WAIT",
                local.as_str(),
                pid.as_str(),
                held.comm.as_str(),
                inode.as_str()
            ),
            "{l:?}"
        );
        let age = seconds(w[1]).unwrap_or_else(|| panic!("age not exact: {l:?}"));
        assert!(age <= held_for + 0.05, "age {age} s, held {held_for} s");
        remotes.push(w[3].to_string());
    }
    remotes.sort();
    let mut clients = held.clients.clone();
    clients.sort();
    assert_eq!(remotes, clients);
}

/// After the view ended with `exit`: the pane's script ran on, tcptrace's
/// exit status is 0, the terminal settings are what they were before it and
/// cooked, and the main screen is back.
fn assert_terminal_restored(tmux: &Tmux, exit: i32) {
    let all = tmux.screen_with_history();
    assert_eq!(exit, 0, "tcptrace's exit status; the screen:\n{all}");
    assert!(all.contains("tcptrace exit status 0\n"), "{all}");
    assert!(all.contains("terminal settings restored\n"), "{all}");
    let words: Vec<&str> = all.split_whitespace().collect();
    for flag in [
        "icanon", "echo", "isig", "iexten", "icrnl", "opost", "onlcr",
    ] {
        assert!(words.contains(&flag), "stty -a lacks {flag}:\n{all}");
        let off = format!("-{flag}");
        assert!(!words.contains(&off.as_str()), "stty -a has {off}:\n{all}");
    }
    assert_eq!(
        tmux.var("alternate_on"),
        "0",
        "still on the alternate screen"
    );
    let screen = tmux.screen();
    for view in ["PORT DIR LISTEN", "sort PORT", "LOST 0", "q quit"] {
        assert!(
            !screen.contains(view),
            "the view's {view:?} is still on the screen:\n{screen}"
        );
    }
    assert!(screen.contains("terminal settings restored"), "{screen}");
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn table_details_keys_and_quit_in_a_real_terminal() {
    let ns = Netns::new("tui");
    let tmux = start_view(&ns);
    let work = Workload::start(&ns);
    let table_screen = wait_for_workload(&tmux);
    println!("the table:\n{table_screen}");

    // Select port 8080 in (rows are by port: 9 in, 9 out, 8080 in) and open
    // it. The selection starts on the first row of the first snapshot that
    // had rows, and stays on its port: Home puts it on top.
    tmux.keys(&["Home"]);
    tmux.wait_selected(CLOSED_PORT, "in");
    tmux.keys(&["Down", "Down"]);
    tmux.wait_selected(LISTEN_PORT, "in");
    tmux.keys(&["Enter"]);
    let details = tmux.wait_for("details of port 8080 in", |s| {
        (status_line(s).ends_with("│ details of port 8080 in") && s.contains("oldest sockets now"))
            .then(|| s.to_string())
    });
    println!("the details:\n{details}");
    assert_details(&details, &ns, &work.held);

    // Esc: back to the table, the selection still on 8080 in.
    tmux.keys(&["Escape"]);
    tmux.wait_for("table after Esc", |s| {
        (!s.contains("details of port") && Table::parse(s).is_some()).then_some(())
    });
    tmux.wait_selected(LISTEN_PORT, "in");

    // `/8080` Enter: only port 8080's rows.
    tmux.type_text("/8080");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the table filtered to 8080", |s| {
        let t = Table::parse(s)?;
        (status_line(s) == "sort PORT ↑  dwell ESTABLISHED  ports 8080  dir all"
            && t.keys() == [("8080".into(), "in".into()), ("8080".into(), "out".into())])
        .then_some(())
    });
    tmux.wait_selected(LISTEN_PORT, "in");

    // `d` steps the dwell state through the states after ESTABLISHED; the
    // dwell columns follow it.
    for state in ["FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE_WAIT"] {
        tmux.keys(&["d"]);
        let want = format!("sort PORT ↑  dwell {state}  ports 8080  dir all");
        let (table, screen) = tmux.wait_for(&format!("dwell {state}"), |s| {
            let table = Table::parse(s).filter(|_| status_line(s) == want)?;
            Some((table, s.to_string()))
        });
        let has_dwell = |dir| seconds(table.cell(LISTEN_PORT, dir, "p50").unwrap()).is_some();
        match state {
            // The clients' sockets passed through FIN_WAIT1 and FIN_WAIT2.
            "FIN_WAIT1" | "FIN_WAIT2" => assert!(
                has_dwell("out") && !has_dwell("in"),
                "{state}; the screen:\n{screen}"
            ),
            "TIME_WAIT" => assert!(
                !has_dwell("out") && !has_dwell("in"),
                "{state}; the screen:\n{screen}"
            ),
            _ => {
                // CLOSE_WAIT: no stay ended, 7 sockets in it since `since`.
                table.assert_row(
                    LISTEN_PORT,
                    "in",
                    &[("p50", "-"), ("p99", "-"), ("max", "-")],
                    &screen,
                );
                table.assert_row(LISTEN_PORT, "out", &[("oldest", "-")], &screen);
                let oldest = table.cell(LISTEN_PORT, "in", "oldest").unwrap();
                let age = seconds(oldest).unwrap_or_else(|| panic!("oldest {oldest:?}"));
                let held_for = work.held.since.elapsed().as_secs_f64();
                assert!(
                    age <= held_for + 0.05 && age >= held_for - 1.5,
                    "oldest CLOSE_WAIT {age} s, held {held_for} s; the screen:\n{screen}"
                );
            }
        }
    }

    tmux.keys(&["q"]);
    let exit = tmux.wait_exit();
    assert_terminal_restored(&tmux, exit);
    work.finish();
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn sigterm_gives_the_terminal_back() {
    let ns = Netns::new("tuiterm");
    let tmux = start_view(&ns);
    let work = Workload::start(&ns);
    wait_for_workload(&tmux);
    // In the details, to end from deeper than the table.
    tmux.keys(&["Home", "Down", "Down", "Enter"]);
    tmux.wait_for("details of port 8080 in", |s| {
        status_line(s)
            .ends_with("│ details of port 8080 in")
            .then_some(())
    });
    let pid = tmux.tcptrace_pid().expect("the pane's tcptrace");
    assert_eq!(tmux.var("pane_dead"), "0");
    // SAFETY: kill on the pid of a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exit = tmux.wait_exit();
    assert!(!alive(pid), "tcptrace {pid} still runs");
    assert_terminal_restored(&tmux, exit);
    work.finish();
}
