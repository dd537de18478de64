//! Connection churn: client threads connect and close as fast as they can
//! against servers on loopback, inside a private network namespace, for a
//! fixed time. The workload of `cargo xtask bench` and `cargo xtask soak`.
//!
//! Each client binds to a varying 127.0.0.0/8 source address before
//! connecting (all of 127/8 is local on `lo`), with IP_BIND_ADDRESS_NO_PORT so
//! that the port is picked at connect() for the whole 4-tuple: neither
//! TIME_WAIT nor the ephemeral port range runs out however long it runs.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{self, Netns};

/// How each connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The client closes first (active close on the client).
    ClientClose,
    /// The server closes first; the client waits for its FIN, then closes.
    ServerClose,
    /// The client aborts with SO_LINGER {1, 0}: a reset instead of a FIN.
    Reset,
    /// The client writes a payload, the server echoes it, the client closes.
    Payload,
    /// Each server port gets one of the four modes above, in turn.
    Mixed,
}

/// The modes a single connection can have, in the order `Mixed` assigns them
/// to ports.
pub const CONNECTION_MODES: [Mode; 4] = [
    Mode::ClientClose,
    Mode::ServerClose,
    Mode::Reset,
    Mode::Payload,
];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::ClientClose => "client-close",
            Mode::ServerClose => "server-close",
            Mode::Reset => "reset",
            Mode::Payload => "payload",
            Mode::Mixed => "mixed",
        }
    }

    /// Events tcptrace reads per connection of this mode, client and server
    /// side together (checked against `tcptrace events` on this kernel, 6.18):
    ///
    /// - client-close and payload, 10: client CLOSE->SYN_SENT->ESTABLISHED->
    ///   FIN_WAIT1->FIN_WAIT2->CLOSE (5), server LISTEN->SYN_RECV->
    ///   ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE (5).
    /// - server-close, 10: the same with the roles swapped.
    /// - reset, 8: client CLOSE->SYN_SENT->ESTABLISHED->CLOSE and its
    ///   tcp_send_reset (4), server LISTEN->SYN_RECV->ESTABLISHED, its
    ///   tcp_receive_reset and ESTABLISHED->CLOSE (4).
    ///
    /// `None` for `Mixed`, whose connections have several modes.
    pub fn events_per_connection(self) -> Option<u64> {
        match self {
            Mode::ClientClose | Mode::ServerClose | Mode::Payload => Some(10),
            Mode::Reset => Some(8),
            Mode::Mixed => None,
        }
    }

    /// Resets each connection of this mode sends by design (reset: the
    /// client's abort). Any other reset the namespace sends is an extra
    /// event. Under churn most come from TIME_WAIT overflow: past
    /// net.ipv4.tcp_max_tw_buckets (131072 in a new namespace) a closing
    /// socket skips TIME_WAIT (TcpExt:TCPTimeWaitOverflow), and a segment
    /// that arrives for it afterwards is answered with a reset. Raising the
    /// limit in the namespace took one 5 s client-close churn from 73,832
    /// such resets to 3,738. The workload keeps the default, as a host does.
    pub fn resets_per_connection(self) -> u64 {
        u64::from(self == Mode::Reset)
    }

    fn for_port(self, index: usize) -> Mode {
        match self {
            Mode::Mixed => CONNECTION_MODES[index % CONNECTION_MODES.len()],
            m => m,
        }
    }

    fn index(self) -> usize {
        CONNECTION_MODES
            .iter()
            .position(|m| *m == self)
            .unwrap_or(0)
    }
}

/// Events per listening socket: CLOSE->LISTEN and LISTEN->CLOSE.
pub const EVENTS_PER_LISTENER: u64 = 2;

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// Client threads.
    pub threads: usize,
    /// Server threads (each serves every port).
    pub server_threads: usize,
    /// Server ports, from `base_port` on.
    pub ports: u16,
    pub base_port: u16,
    pub duration: Duration,
    /// Bytes written and echoed in `payload` mode.
    pub payload: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::ClientClose,
            threads: 2,
            server_threads: 2,
            ports: 1,
            base_port: 9000,
            duration: Duration::from_secs(5),
            payload: 1024,
        }
    }
}

/// Live counters, readable while the churn runs (the soak samples them).
#[derive(Debug, Default)]
pub struct Progress {
    pub connections: AtomicU64,
    pub errors: AtomicU64,
    /// Completed connections per entry of [`CONNECTION_MODES`].
    pub by_mode: [AtomicU64; 4],
}

/// What one churn run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub connections: u64,
    /// Client connections that failed (connect, read or write errors).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Accepted connections the server could not serve to their end.
    pub server_errors: u64,
    /// Completed connections per entry of [`CONNECTION_MODES`].
    pub by_mode: [u64; 4],
    /// From the start of the clients to the end of the last one.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Events per connection, weighted by the modes the connections had.
    pub fn events_per_connection(&self) -> f64 {
        self.weighted(|m| m.events_per_connection().unwrap_or(0))
    }

    /// Resets sent per connection by design, weighted likewise.
    pub fn resets_per_connection(&self) -> f64 {
        self.weighted(Mode::resets_per_connection)
    }

    fn weighted(&self, per: impl Fn(Mode) -> u64) -> f64 {
        let total: u64 = self.by_mode.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let sum: u64 = CONNECTION_MODES
            .iter()
            .zip(self.by_mode)
            .map(|(m, n)| per(*m) * n)
            .sum();
        sum as f64 / total as f64
    }
}

/// Runs the churn in `ns` for `cfg.duration`, or until `stop` is set.
pub fn run(ns: &Netns, cfg: &Config, progress: &Progress, stop: &AtomicBool) -> Result<Outcome> {
    if cfg.threads == 0 || cfg.server_threads == 0 || cfg.ports == 0 {
        bail!("churn needs at least one client thread, one server thread and one port");
    }
    if cfg.threads > 200 {
        bail!("at most 200 client threads (each has its own 127.N.0.0/16 source range)");
    }
    if cfg.mode == Mode::Mixed && cfg.ports < 4 {
        bail!("mixed mode needs at least 4 ports (one mode per port)");
    }
    let last = u32::from(cfg.base_port) + u32::from(cfg.ports) - 1;
    if last > 65535 || cfg.base_port == 0 {
        bail!("ports {}..={last} do not fit", cfg.base_port);
    }
    let ports: Vec<(u16, Mode)> = (0..cfg.ports)
        .map(|i| (cfg.base_port + i, cfg.mode.for_port(usize::from(i))))
        .collect();
    let listeners = {
        let ports = ports.clone();
        ns.run(move || listen_all(&ports))?
    };

    let servers_stop = AtomicBool::new(false);
    let server_errors = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let path = ns.path();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let (ended, failure) = thread::scope(|scope| {
        let servers: Vec<_> = (0..cfg.server_threads)
            .map(|_| scope.spawn(|| serve(&listeners, &servers_stop, &server_errors, cfg.payload)))
            .collect();
        let clients: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let (path, ports, first_error) = (&path, &ports, &first_error);
                scope.spawn(move || -> Result<Instant> {
                    netns::enter(path)?;
                    client(t, ports, cfg.payload, deadline, stop, progress, first_error);
                    Ok(Instant::now())
                })
            })
            .collect();
        let mut ended = start;
        let mut failure = None;
        for c in clients {
            match c.join() {
                Ok(Ok(end)) => ended = ended.max(end),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(anyhow!("a churn client thread panicked")),
            }
        }
        servers_stop.store(true, Ordering::Relaxed);
        for s in servers {
            if s.join().is_err() {
                failure = Some(anyhow!("a churn server thread panicked"));
            }
        }
        (ended, failure)
    });
    drop(listeners);
    if let Some(e) = failure {
        return Err(e);
    }
    let by_mode = std::array::from_fn(|i| progress.by_mode[i].load(Ordering::Relaxed));
    let first_error = first_error.into_inner().unwrap_or_default();
    Ok(Outcome {
        connections: progress.connections.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        first_error,
        server_errors: server_errors.into_inner(),
        by_mode,
        elapsed: ended - start,
    })
}

struct Listener {
    socket: TcpListener,
    mode: Mode,
}

fn listen_all(ports: &[(u16, Mode)]) -> Result<Vec<Listener>> {
    ports
        .iter()
        .map(|&(port, mode)| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
                .with_context(|| format!("bind 127.0.0.1:{port}"))?;
            s.listen(4096)?;
            s.set_nonblocking(true)?;
            Ok(Listener {
                socket: s.into(),
                mode,
            })
        })
        .collect()
}

/// A server thread: polls every listener, accepts, and serves each
/// connection to its end before the next. After `halt`, it drains the
/// accept queues until they stay empty, so that no connection is cut short.
fn serve(listeners: &[Listener], halt: &AtomicBool, errors: &AtomicU64, payload: usize) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = vec![0u8; payload.max(4096)];
    loop {
        let halting = halt.load(Ordering::Relaxed);
        let timeout = if halting { 100 } else { 50 };
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n == 0 && halting {
            return;
        }
        if n < 0 {
            continue;
        }
        for (pfd, l) in fds.iter().zip(listeners) {
            if pfd.revents == 0 {
                continue;
            }
            for _ in 0..64 {
                match l.socket.accept() {
                    Ok((conn, _)) => {
                        if serve_one(conn, l.mode, payload, &mut buf).is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

fn serve_one(mut conn: TcpStream, mode: Mode, payload: usize, buf: &mut [u8]) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    match mode {
        Mode::ServerClose => return Ok(()),
        Mode::Payload => {
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            conn.read_exact(&mut buf[..payload])?;
            conn.write_all(&buf[..payload])?;
        }
        _ => conn.set_read_timeout(Some(IO_TIMEOUT))?,
    }
    // Until the client's FIN (or, in reset mode, its reset).
    loop {
        match conn.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && mode == Mode::Reset => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// No single connect, read or write waits longer, so a lost packet costs a
/// bounded stall, never a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn client(
    thread_index: usize,
    ports: &[(u16, Mode)],
    payload: usize,
    deadline: Instant,
    stop: &AtomicBool,
    progress: &Progress,
    first_error: &Mutex<Option<String>>,
) {
    let mut buf = vec![0x5au8; payload];
    // Thread t uses sources 127.(t+1).x.y, y in 1..=254: 65,024 addresses.
    let net = (thread_index + 1) as u8;
    let mut k: u32 = 0;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let a = k % (256 * 254);
        let src = Ipv4Addr::new(127, net, (a / 254) as u8, (a % 254 + 1) as u8);
        let (port, mode) = ports[(k as usize + thread_index) % ports.len()];
        k = k.wrapping_add(1);
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        match connect_once(src, dst, mode, &mut buf) {
            Ok(()) => {
                progress.connections.fetch_add(1, Ordering::Relaxed);
                progress.by_mode[mode.index()].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = first_error.lock()
                    && first.is_none()
                {
                    *first = Some(format!("{src} -> {dst} ({}): {e}", mode.name()));
                }
            }
        }
    }
}

fn connect_once(src: Ipv4Addr, dst: SocketAddrV4, mode: Mode, buf: &mut [u8]) -> io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    bind_address_no_port(&s)?;
    // SO_SNDTIMEO also bounds a blocking connect() on Linux.
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect(&SocketAddr::V4(dst).into())?;
    match mode {
        Mode::ClientClose | Mode::Mixed => {}
        Mode::Reset => s.set_linger(Some(Duration::ZERO))?,
        Mode::ServerClose => {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut stream = TcpStream::from(s);
            while stream.read(buf)? > 0 {}
        }
        Mode::Payload => {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut stream = TcpStream::from(s);
            stream.write_all(buf)?;
            stream.read_exact(buf)?;
        }
    }
    Ok(())
}

/// The source port is picked at connect() for the full 4-tuple, not at bind().
fn bind_address_no_port(s: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
