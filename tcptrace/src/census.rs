//! The socket census: every TCP socket in every network namespace, from the kernel's inet_diag netlink dump (what `ss -tan` uses).
//!
//! The tracer sees transitions; the census sees what exists right now,
//! including what the tracepoints never show: timewait mini-sockets (TIME_WAIT
//! and orphaned FIN_WAIT2) and half-open request sockets. A dump is per
//! namespace (the netlink socket answers for the namespace it was created
//! in), so each namespace is dumped from a short-lived thread that setns()es
//! into it; the caller's thread never moves.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use crate::tcp::{Family, TcpState};

/// TCP_TIMEWAIT_LEN (include/net/tcp.h): how long a TIME_WAIT socket lives.
pub const TIME_WAIT_MS: u32 = 60_000;

/// One socket as inet_diag reports it (`struct inet_diag_msg`,
/// include/uapi/linux/inet_diag.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CensusSocket {
    /// Network namespace inode (as in `ls -l /proc/PID/ns/net`).
    pub netns: u32,
    pub family: Family,
    /// For timewait sockets their substate (TIME_WAIT or FIN_WAIT2). Request
    /// sockets are NewSynRecv (the kernel reports them as SYN_RECV).
    /// Bound-but-inactive sockets show as CLOSE: the kernel reports their
    /// sk_state, TCP_BOUND_INACTIVE is only a filter bit.
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// idiag_cookie as one u64: cookie[0] | cookie[1] << 32. This is the
    /// kernel's socket cookie, the value bpf_get_socket_cookie() returns:
    /// inet_diag_msg_common_fill() (net/ipv4/inet_diag.c) calls
    /// sock_diag_save_cookie() (net/core/sock_diag.c), and the helper's
    /// tp_btf variant bpf_get_socket_ptr_cookie() (net/core/filter.c) calls
    /// sock_gen_cookie(); both end in __sock_gen_cookie(), which reads
    /// sk_cookie and assigns it once, lazily, if it is still 0. A timewait socket inherits
    /// the full socket's sk_cookie (inet_twsk_alloc, net/ipv4/inet_timewait_sock.c),
    /// so it keeps the cookie the tracer saw; a request socket has its own
    /// (ir_cookie aliases sk_cookie), distinct from the child it becomes.
    pub cookie: u64,
    /// A timewait mini-socket (orphaned FIN_WAIT2 or TIME_WAIT), not a full socket.
    pub timewait: bool,
    /// idiag_expires (ms) when a timer is pending: retransmit (also the
    /// SYN-ACK timer of request sockets), zero-window probe, keepalive (also
    /// the FIN_WAIT2 timer of orphans kept as full sockets) or timewait.
    pub timer_left_ms: Option<u32>,
    /// For LISTEN: the current accept-queue length (sk_ack_backlog). Else
    /// rcv_nxt - copied_seq: unread bytes, plus 1 for an unread FIN.
    pub recv_q: u32,
    /// For LISTEN: the backlog limit (sk_max_ack_backlog). Else bytes not yet
    /// acknowledged (write_seq - snd_una), net/ipv4/tcp_diag.c.
    pub send_q: u32,
    /// Owner uid; 0 for timewait and request sockets (not reported).
    pub uid: u32,
    /// Socket inode; 0 when no file holds the socket: timewait and request
    /// sockets, children still in an accept queue, orphans after close().
    pub inode: u32,
}

impl CensusSocket {
    /// For timewait sockets: how long it has been in its state, derived from the timer:
    /// TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h); an orphaned FIN_WAIT2 timewait
    /// socket lives for tcp_fin_timeout of its namespace. None for full sockets.
    ///
    /// An estimate for FIN_WAIT2: a per-socket TCP_LINGER2 or an RTO above
    /// tcp_fin_timeout / 3.5 lengthens the wait (tcp_fin_time(), include/net/tcp.h),
    /// and the age then reads low, never below 0.
    pub fn age_ms(&self, fin_timeout_ms: u32) -> Option<u64> {
        if !self.timewait {
            return None;
        }
        let lifetime = match self.state {
            TcpState::TimeWait => TIME_WAIT_MS,
            TcpState::FinWait2 => fin_wait2_lifetime_ms(fin_timeout_ms),
            _ => return None,
        };
        let left = self.timer_left_ms?;
        Some(u64::from(lifetime.saturating_sub(left)))
    }
}

/// How long an orphaned FIN_WAIT2 lives as a timewait socket. Above 60 s,
/// tcp_close() (net/ipv4/tcp.c) first keeps the full socket for
/// `fin_timeout - 60 s` on the keepalive timer, and tcp_keepalive_timer()
/// (net/ipv4/tcp_timer.c) then hands `fin_timeout - 60 s` to the timewait socket.
fn fin_wait2_lifetime_ms(fin_timeout_ms: u32) -> u32 {
    if fin_timeout_ms > TIME_WAIT_MS {
        fin_timeout_ms - TIME_WAIT_MS
    } else {
        fin_timeout_ms
    }
}

/// A network namespace and a path that holds it open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: PathBuf,
}

/// One namespace's sockets, with the sysctl needed to age its FIN_WAIT2 sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsCensus {
    pub inode: u32,
    /// net.ipv4.tcp_fin_timeout of this namespace, in ms.
    pub fin_timeout_ms: u32,
    pub sockets: Vec<CensusSocket>,
}

/// Every distinct network namespace: from /proc/*/ns/net (first pid seen per inode) and /run/netns/*.
///
/// /run/netns entries come first: a bind mount outlives any process. Paths
/// this process may not inspect (other users' processes, when not root) are
/// skipped. Sorted by inode.
pub fn namespaces() -> Vec<Netns> {
    // Every namespace file lives on nsfs; a stale /run/netns file left by a
    // failed `ip netns add` is a plain tmpfs file and must not count.
    let Ok(nsfs_dev) = fs::metadata("/proc/self/ns/net").map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    paths.extend(
        pids.iter()
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))),
    );
    dedup_by_inode(paths.into_iter().filter_map(|path| {
        let meta = fs::metadata(&path).ok()?;
        let inode = u32::try_from(meta.ino()).ok()?;
        (meta.dev() == nsfs_dev).then_some((inode, path))
    }))
}

/// Keeps the first path seen for each inode.
fn dedup_by_inode(found: impl IntoIterator<Item = (u32, PathBuf)>) -> Vec<Netns> {
    let mut by_inode = BTreeMap::new();
    for (inode, path) in found {
        by_inode.entry(inode).or_insert(path);
    }
    by_inode
        .into_iter()
        .map(|(inode, path)| Netns { inode, path })
        .collect()
}

/// One namespace's census: a dedicated short-lived thread setns()es into it (never the caller's thread), dumps AF_INET and AF_INET6 TCP sockets in all states, reads that namespace's /proc/sys/net/ipv4/tcp_fin_timeout, and returns.
pub fn dump_netns(ns: &Netns) -> Result<NetnsCensus> {
    census_on_thread(ns)?.ok_or_else(|| {
        anyhow!(
            "network namespace {} ({}) is gone",
            ns.inode,
            ns.path.display()
        )
    })
}

/// All namespaces (or only `only` if given), skipping ones that vanish meanwhile (a race, not an error).
pub fn dump_all(only: Option<u32>) -> Result<Vec<NetnsCensus>> {
    let mut all = namespaces();
    if let Some(inode) = only {
        all.retain(|ns| ns.inode == inode);
        if all.is_empty() {
            bail!("network namespace {inode} not found: no process or /run/netns entry holds it");
        }
    }
    let mut out = Vec::with_capacity(all.len());
    for ns in &all {
        match census_on_thread(ns) {
            Ok(Some(census)) => out.push(census),
            Ok(None) => log::debug!("network namespace {} vanished during the census", ns.inode),
            Err(e) if only.is_some() => return Err(e),
            // One namespace we cannot enter must not cost the census of all
            // the others.
            Err(e) => log::debug!("census of network namespace {} skipped: {e:#}", ns.inode),
        }
    }
    Ok(out)
}

/// `None`: the namespace is gone (its process exited, or its pid now names
/// another namespace).
fn census_on_thread(ns: &Netns) -> Result<Option<NetnsCensus>> {
    let ns = ns.clone();
    thread::Builder::new()
        .name(format!("census-{}", ns.inode))
        .spawn(move || census_here(&ns))
        .context("spawning the census thread")?
        .join()
        .map_err(|_| anyhow!("the census thread panicked"))?
}

/// Runs on the census thread, which it moves into `ns` for good.
fn census_here(ns: &Netns) -> Result<Option<NetnsCensus>> {
    let file = match File::open(&ns.path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "opening {} (run as root to see every namespace)",
                    ns.path.display()
                )
            });
        }
    };
    if u64::from(ns.inode) != file.metadata().context("fstat on a namespace")?.ino() {
        return Ok(None);
    }
    let here = fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?
        .ino();
    // Entering the namespace we are already in needs no privilege: skip it.
    if here != u64::from(ns.inode) {
        // SAFETY: setns() on an fd we own; it moves only this thread, which
        // ends when the census is done.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let err = io::Error::last_os_error();
            let hint = if err.kind() == io::ErrorKind::PermissionDenied {
                " (needs root: CAP_SYS_ADMIN)"
            } else {
                ""
            };
            return Err(err)
                .with_context(|| format!("entering network namespace {}{hint}", ns.inode));
        }
    }
    // /proc/sys/net resolves against the opening thread's namespace
    // (net_ctl_header_lookup(), net/sysctl_net.c), so this reads `ns`'s value.
    let fin_timeout_ms = read_fin_timeout_ms()?;
    // A netlink socket answers for the namespace it was created in.
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    sock.bind_auto().context("binding the sock_diag socket")?;
    sock.connect(&NetlinkAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    let mut sockets = dump_family(&sock, ns.inode, AF_INET)?;
    sockets.extend(dump_family(&sock, ns.inode, AF_INET6)?);
    Ok(Some(NetnsCensus {
        inode: ns.inode,
        fin_timeout_ms,
        sockets,
    }))
}

fn read_fin_timeout_ms() -> Result<u32> {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_fin_timeout";
    let text = fs::read_to_string(PATH).context(PATH)?;
    let secs: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{PATH}: {text:?}"))?;
    Ok(secs.saturating_mul(1000))
}

/// Every state bit the kernel knows (1 << TCP_*, include/net/tcp_states.h):
/// with TCPF_SYN_RECV the dump includes request sockets (tcp_diag_dump(),
/// net/ipv4/tcp_diag.c), with TCPF_BOUND_INACTIVE bound-only sockets.
fn all_states() -> StateFlags {
    let bits = TcpState::ALL
        .iter()
        .fold(0u32, |bits, st| bits | 1 << st.to_kernel());
    StateFlags::from_bits_retain(bits)
}

fn dump_family(sock: &Socket, netns: u32, family: u8) -> Result<Vec<CensusSocket>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = u32::from(family);
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: all_states(),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    sock.send(&buf, 0)
        .context("sending the sock_diag dump request")?;

    let mut out = Vec::new();
    loop {
        let (datagram, _) = sock
            .recv_from_full()
            .context("reading the sock_diag dump")?;
        match parse_datagram(&datagram, netns, &mut out) {
            Ok(false) => {}
            Ok(true) => return Ok(out),
            // No IPv6 in this kernel (ipv6.disable=1): inet6_diag is absent.
            Err(e)
                if family == AF_INET6
                    && e.downcast_ref::<io::Error>()
                        .is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT)) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Appends the sockets of one datagram; `true` once the dump is done.
fn parse_datagram(mut rest: &[u8], netns: u32, out: &mut Vec<CensusSocket>) -> Result<bool> {
    while !rest.is_empty() {
        let raw = NetlinkBuffer::new_checked(rest).context("a malformed netlink message")?;
        let len = raw.length() as usize;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rest[..len])
            .context("decoding a sock_diag message")?;
        match msg.payload {
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(io::Error::from_raw_os_error(-done.code))
                    .context("the sock_diag dump failed");
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(err) if err.code.is_some() => {
                return Err(err.to_io()).context("sock_diag refused the dump");
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                if let Some(sock) = census_socket(netns, &resp, raw.payload()) {
                    out.push(sock);
                }
            }
            _ => {}
        }
        // NLMSG_ALIGN (include/uapi/linux/netlink.h).
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

/// idiag_expires from a raw `struct inet_diag_msg`: family, state, timer,
/// retrans (4 x u8), `struct inet_diag_sockid` (48 bytes), then expires
/// (include/uapi/linux/inet_diag.h). netlink-packet-sock-diag 0.5 drops it
/// for timewait sockets (timer 3), whose age we derive from it.
fn raw_expires(msg: &[u8]) -> Option<u32> {
    const OFFSET: usize = 4 + 48;
    let bytes = msg.get(OFFSET..OFFSET + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// idiag_cookie is `__u32 [2]`, low word first (sock_diag_save_cookie()).
fn cookie_from(raw: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(lo) | u64::from(hi) << 32
}

fn census_socket(netns: u32, resp: &InetResponse, raw_msg: &[u8]) -> Option<CensusSocket> {
    let h = &resp.header;
    let family = Family::from_kernel(u16::from(h.family))?;
    let id = &h.socket_id;
    let timer_left_ms = match &h.timer {
        Some(Timer::Retransmit(left, _) | Timer::KeepAlive(left) | Timer::Probe(left)) => {
            Some(u32::try_from(left.as_millis()).unwrap_or(u32::MAX))
        }
        Some(Timer::TimeWait) => raw_expires(raw_msg),
        None => None,
    };
    // Timer 3 is set only by tcp_twsk_diag_fill() (net/ipv4/tcp_diag.c).
    let timewait = h.timer == Some(Timer::TimeWait);
    let mut state = TcpState::from_kernel(h.state);
    // tcp_req_diag_fill() reports request sockets as SYN_RECV and, unlike
    // inet_sk_diag_fill() for full sockets, never adds INET_DIAG_SHUTDOWN.
    if state == TcpState::SynRecv
        && !timewait
        && !resp.nlas.iter().any(|n| matches!(n, Nla::Shutdown(_)))
    {
        state = TcpState::NewSynRecv;
    }
    Some(CensusSocket {
        netns,
        family,
        state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        cookie: cookie_from(id.cookie),
        timewait,
        timer_left_ms,
        recv_q: h.recv_queue,
        send_q: h.send_queue,
        uid: h.uid,
        inode: h.inode,
    })
}

/// The inode of a namespace file, e.g. `/proc/self/ns/net`.
pub fn netns_inode(path: &Path) -> io::Result<u32> {
    let ino = fs::metadata(path)?.ino();
    u32::try_from(ino).map_err(|_| io::Error::other(format!("inode {ino} exceeds 32 bits")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use netlink_packet_core::{DoneMessage, Emitable};
    use netlink_packet_sock_diag::inet::InetResponseHeader;

    use super::*;

    fn response(state: u8, timer: Option<Timer>, nlas: Vec<Nla>) -> InetResponse {
        let mut socket_id = SocketId::new_v4();
        socket_id.source_address = "127.0.0.1".parse().unwrap();
        socket_id.source_port = 8080;
        socket_id.destination_address = "127.0.0.2".parse().unwrap();
        socket_id.destination_port = 40000;
        socket_id.cookie = [1, 0, 0, 0, 2, 0, 0, 0];
        InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state,
                timer,
                socket_id,
                recv_queue: 3,
                send_queue: 8,
                uid: 1000,
                inode: 4242,
            },
            nlas: nlas.into(),
        }
    }

    /// The bytes of a response as the kernel sends them, with idiag_expires
    /// patched in: the crate writes 0 there for timewait sockets.
    fn raw(resp: &InetResponse, expires: u32) -> Vec<u8> {
        let mut buf = vec![0; resp.buffer_len()];
        resp.emit(&mut buf);
        buf[52..56].copy_from_slice(&expires.to_ne_bytes());
        buf
    }

    fn timewait(state: TcpState, left: u32) -> CensusSocket {
        let resp = response(state.to_kernel(), Some(Timer::TimeWait), vec![]);
        census_socket(7, &resp, &raw(&resp, left)).unwrap()
    }

    #[test]
    fn cookie_is_low_word_first() {
        let lo = 0x1122_3344u32.to_ne_bytes();
        let hi = 0x5566_7788u32.to_ne_bytes();
        let raw = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        assert_eq!(cookie_from(raw), 0x5566_7788_1122_3344);
        assert_eq!(cookie_from([0; 8]), 0);
    }

    #[test]
    fn expires_offset_matches_the_crate_layout() {
        let resp = response(
            1,
            Some(Timer::Retransmit(Duration::from_millis(1234), 2)),
            vec![],
        );
        let mut buf = vec![0; resp.buffer_len()];
        resp.emit(&mut buf);
        assert_eq!(raw_expires(&buf), Some(1234));
        assert_eq!(raw_expires(&buf[..55]), None);
    }

    #[test]
    fn full_socket_fields() {
        let resp = response(10, None, vec![Nla::Shutdown(0)]);
        let s = census_socket(7, &resp, &raw(&resp, 0)).unwrap();
        assert_eq!(s.netns, 7);
        assert_eq!(s.family, Family::Ipv4);
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.2:40000".parse().unwrap());
        assert_eq!(s.cookie, 1 | 2 << 32);
        assert!(!s.timewait);
        assert_eq!(s.timer_left_ms, None);
        assert_eq!((s.recv_q, s.send_q, s.uid, s.inode), (3, 8, 1000, 4242));
        assert_eq!(s.age_ms(60_000), None);

        let keepalive = response(
            5,
            Some(Timer::KeepAlive(Duration::from_millis(900))),
            vec![],
        );
        let s = census_socket(7, &keepalive, &raw(&keepalive, 900)).unwrap();
        assert_eq!((s.state, s.timer_left_ms), (TcpState::FinWait2, Some(900)));
        assert_eq!(
            s.age_ms(60_000),
            None,
            "a full FIN_WAIT2 socket has no derived age"
        );
    }

    #[test]
    fn request_sockets_are_syn_recv_without_shutdown() {
        let req = response(
            3,
            Some(Timer::Retransmit(Duration::from_millis(800), 1)),
            vec![],
        );
        let s = census_socket(7, &req, &raw(&req, 800)).unwrap();
        assert_eq!(s.state, TcpState::NewSynRecv);
        assert_eq!(s.timer_left_ms, Some(800));
        let full = response(3, None, vec![Nla::Shutdown(0)]);
        let s = census_socket(7, &full, &raw(&full, 0)).unwrap();
        assert_eq!(s.state, TcpState::SynRecv);
    }

    #[test]
    fn timewait_age_from_the_timer() {
        let tw = timewait(TcpState::TimeWait, 59_000);
        assert!(tw.timewait);
        assert_eq!(tw.timer_left_ms, Some(59_000));
        assert_eq!(tw.age_ms(30_000), Some(1_000));
        assert_eq!(timewait(TcpState::TimeWait, 0).age_ms(30_000), Some(60_000));

        let fw2 = timewait(TcpState::FinWait2, 25_000);
        assert_eq!(fw2.age_ms(30_000), Some(5_000));
        // A longer wait than tcp_fin_timeout (TCP_LINGER2, large RTO) never goes negative.
        assert_eq!(fw2.age_ms(20_000), Some(0));
        // Above 60 s the timewait socket gets fin_timeout - 60 s.
        assert_eq!(fw2.age_ms(90_000), Some(5_000));
    }

    #[test]
    fn fin_wait2_lifetime() {
        assert_eq!(fin_wait2_lifetime_ms(60_000), 60_000);
        assert_eq!(fin_wait2_lifetime_ms(15_000), 15_000);
        assert_eq!(fin_wait2_lifetime_ms(100_000), 40_000);
    }

    #[test]
    fn dedup_keeps_first_path_per_inode() {
        let found = [
            (5, PathBuf::from("/run/netns/a")),
            (3, PathBuf::from("/proc/1/ns/net")),
            (5, PathBuf::from("/proc/9/ns/net")),
            (3, PathBuf::from("/proc/2/ns/net")),
        ];
        assert_eq!(
            dedup_by_inode(found),
            vec![
                Netns {
                    inode: 3,
                    path: "/proc/1/ns/net".into()
                },
                Netns {
                    inode: 5,
                    path: "/run/netns/a".into()
                },
            ]
        );
    }

    #[test]
    fn all_states_cover_request_and_bound_sockets() {
        let bits = all_states().bits();
        assert_eq!(bits, 0b11_1111_1111_1110);
    }

    fn message(payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.message_type = 20; // SOCK_DIAG_BY_FAMILY
        let mut msg = NetlinkMessage::new(header, payload);
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn datagram_with_sockets_then_done() {
        let resp = response(1, None, vec![Nla::Shutdown(0)]);
        let mut datagram = message(NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(
            Box::new(resp.clone()),
        )));
        datagram.extend(message(NetlinkPayload::InnerMessage(
            SockDiagMessage::InetResponse(Box::new(resp)),
        )));
        let mut out = Vec::new();
        assert!(!parse_datagram(&datagram, 1, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].state, TcpState::Established);

        let done = message(NetlinkPayload::Done(DoneMessage::default()));
        assert!(parse_datagram(&done, 1, &mut out).unwrap());
        let mut failed = DoneMessage::default();
        failed.code = -libc::EINTR;
        let err = parse_datagram(&message(NetlinkPayload::Done(failed)), 1, &mut out).unwrap_err();
        assert_eq!(
            err.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::EINTR)
        );
    }
}
