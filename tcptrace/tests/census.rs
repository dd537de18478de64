//! Kernel tests of the socket census (`tcptrace::census`): real sockets in a
//! private network namespace, dumped through inet_diag, exact values. Run as
//! root by `cargo xtask test`.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{Netns, Trace, connect_accept, of_local, run, wait_until};
use socket2::{Domain, SockRef, Socket, Type};
use tcptrace::census::{self, CensusSocket, NetnsCensus};
use tcptrace::tcp::{Family, TcpState};

const LIMIT: Duration = Duration::from_secs(5);

fn census_of(ns: &Netns) -> NetnsCensus {
    let mut all = census::dump_all(Some(ns.inode as u32)).expect("census");
    assert_eq!(all.len(), 1, "one namespace asked for");
    let census = all.remove(0);
    assert_eq!(u64::from(census.inode), ns.inode);
    census
}

/// Polls the census until `pick` selects exactly `n` sockets; returns them.
fn wait_for(
    ns: &Netns,
    n: usize,
    pick: impl Fn(&CensusSocket) -> bool,
) -> (NetnsCensus, Vec<CensusSocket>) {
    let mut last = None;
    let ok = wait_until(LIMIT, || {
        let c = census_of(ns);
        let hit = c.sockets.iter().filter(|s| pick(s)).count() == n;
        last = Some(c);
        hit
    });
    let c = last.unwrap();
    assert!(ok, "wanted {n} sockets, census: {:#?}", c.sockets);
    let picked = c.sockets.iter().filter(|s| pick(s)).cloned().collect();
    (c, picked)
}

fn listener(addr: &str, backlog: i32) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(backlog).unwrap();
    s.into()
}

fn cookie<T: AsFd>(sock: &T) -> u64 {
    SockRef::from(sock).cookie().unwrap()
}

fn inode<T: AsFd>(sock: &T) -> u32 {
    let fd = sock.as_fd().as_raw_fd();
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .ino() as u32
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn listener_reports_accept_queue_and_backlog() {
    let ns = Netns::new("census-listen");
    let (l, clients) = ns.run(|| {
        let l = listener("127.0.0.1:0", 8);
        let addr = l.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        (l, clients)
    });
    let addr = l.local_addr().unwrap();
    let (c, listen) = wait_for(&ns, 1, |s| s.local == addr && s.recv_q == 3);
    let listen = &listen[0];
    assert_eq!(listen.state, TcpState::Listen);
    assert_eq!(listen.family, Family::Ipv4);
    assert_eq!(listen.send_q, 8, "the backlog given to listen()");
    assert_eq!(listen.remote, "0.0.0.0:0".parse().unwrap());
    assert_eq!(u64::from(listen.netns), ns.inode);
    assert!(!listen.timewait);
    assert_eq!(listen.timer_left_ms, None);
    assert_eq!(listen.uid, 0);
    assert_eq!(listen.inode, inode(&l));
    assert_eq!(listen.cookie, cookie(&l), "idiag_cookie is SO_COOKIE");

    // The 3 unaccepted children: established, no file yet (inode 0).
    let children: Vec<_> = c
        .sockets
        .iter()
        .filter(|s| s.local == addr && s.state == TcpState::Established)
        .collect();
    assert_eq!(children.len(), 3, "{children:#?}");
    assert!(children.iter().all(|s| s.inode == 0 && !s.timewait));
    for client in &clients {
        let local = client.local_addr().unwrap();
        let mine: Vec<_> = c.sockets.iter().filter(|s| s.local == local).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].state, TcpState::Established);
        assert_eq!(mine[0].remote, addr);
        assert_eq!(mine[0].inode, inode(client));
        assert_eq!(mine[0].cookie, cookie(client));
        assert!(children.iter().any(|s| s.remote == local));
    }
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn close_wait_server_and_fin_wait2_timewait_clients() {
    let ns = Netns::new("census-closewait");
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_fin_timeout=30",
        ],
    );
    let (l, servers, client_cookies) = ns.run(|| {
        let l = listener("127.0.0.1:0", 16);
        let mut servers = Vec::new();
        let mut cookies = Vec::new();
        for _ in 0..4 {
            let (c, s) = connect_accept(&l);
            cookies.push((c.local_addr().unwrap(), cookie(&c)));
            drop(c); // client closes first; the server holds its end
            servers.push(s);
        }
        (l, servers, cookies)
    });
    let port = l.local_addr().unwrap().port();
    let (c, close_wait) = wait_for(&ns, 4, |s| {
        s.local.port() == port && s.state == TcpState::CloseWait
    });
    assert_eq!(c.fin_timeout_ms, 30_000, "the namespace's own sysctl");
    for s in &servers {
        let local = s.local_addr().unwrap();
        let peer = s.peer_addr().unwrap();
        let found: Vec<_> = close_wait
            .iter()
            .filter(|x| x.local == local && x.remote == peer)
            .collect();
        assert_eq!(found.len(), 1);
        assert!(!found[0].timewait);
        assert_eq!(found[0].inode, inode(s));
        assert_eq!(found[0].cookie, cookie(s));
        // rcv_nxt - copied_seq: the unread FIN takes one sequence number.
        assert_eq!((found[0].recv_q, found[0].send_q), (1, 0));
    }

    // The clients are orphaned FIN_WAIT2 timewait sockets (fin_timeout <= 60 s).
    let (c, fw2) = wait_for(&ns, 4, |s| s.remote.port() == port && s.timewait);
    for (local, ck) in &client_cookies {
        let s = fw2
            .iter()
            .find(|s| s.local == *local)
            .expect("client socket");
        assert_eq!(s.state, TcpState::FinWait2);
        assert_eq!((s.inode, s.uid, s.recv_q, s.send_q), (0, 0, 0, 0));
        assert_eq!(
            s.cookie, *ck,
            "a timewait socket keeps its full socket's cookie"
        );
        let left = s.timer_left_ms.unwrap();
        assert!(left <= 30_000, "{left}");
        let age = s.age_ms(c.fin_timeout_ms).unwrap();
        assert!(age <= 3_000, "age {age}");
    }
}

/// Client closes first, server second: the client side ends in TIME_WAIT.
fn time_wait_pairs(
    ns: &Netns,
    bind: &'static str,
    n: usize,
) -> (TcpListener, Vec<(SocketAddr, u64)>) {
    ns.run(move || {
        let l = listener(bind, 16);
        let mut clients = Vec::new();
        for _ in 0..n {
            let (c, mut s) = connect_accept(&l);
            clients.push((c.local_addr().unwrap(), cookie(&c)));
            drop(c);
            // Wait for the client's FIN, then close: CLOSE_WAIT -> LAST_ACK.
            assert_eq!(s.read(&mut [0; 1]).unwrap(), 0);
        }
        (l, clients)
    })
}

fn assert_time_wait(ns: &Netns, l: &TcpListener, clients: &[(SocketAddr, u64)], family: Family) {
    let addr = l.local_addr().unwrap();
    let (c, tw) = wait_for(ns, clients.len(), |s| {
        s.remote == addr && s.timewait && s.state == TcpState::TimeWait
    });
    for (local, ck) in clients {
        let s = tw
            .iter()
            .find(|s| s.local == *local)
            .expect("client socket");
        assert_eq!(s.family, family);
        assert_ne!(s.cookie, 0);
        assert_eq!(
            s.cookie, *ck,
            "a timewait socket keeps its full socket's cookie"
        );
        assert_eq!(s.inode, 0);
        let left = s.timer_left_ms.unwrap();
        assert!((55_000..=60_000).contains(&left), "left {left}");
        let age = s.age_ms(c.fin_timeout_ms).unwrap();
        assert!(age <= 5_000, "age {age}");
    }
    // Nothing else of these connections remains: the server sides are gone.
    let rest: Vec<_> = c
        .sockets
        .iter()
        .filter(|s| s.local.port() == addr.port() && s.state != TcpState::Listen)
        .collect();
    assert!(rest.is_empty(), "{rest:#?}");
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn time_wait_timewait_sockets_ipv4() {
    let ns = Netns::new("census-tw4");
    let (l, clients) = time_wait_pairs(&ns, "127.0.0.1:0", 5);
    assert_time_wait(&ns, &l, &clients, Family::Ipv4);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn ipv6_sockets() {
    let ns = Netns::new("census-v6");
    let (l, clients) = time_wait_pairs(&ns, "[::1]:0", 3);
    assert_time_wait(&ns, &l, &clients, Family::Ipv6);

    // One more, left established and unaccepted.
    let addr = l.local_addr().unwrap();
    let c = ns.run(move || TcpStream::connect(addr).unwrap());
    let (census, listen) = wait_for(&ns, 1, |s| s.local == addr && s.state == TcpState::Listen);
    assert_eq!(listen[0].family, Family::Ipv6);
    assert_eq!(listen[0].recv_q, 1);
    assert_eq!(listen[0].send_q, 16);
    assert_eq!(listen[0].remote, "[::]:0".parse().unwrap());
    let mine: Vec<_> = census
        .sockets
        .iter()
        .filter(|s| s.local == c.local_addr().unwrap())
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].family, Family::Ipv6);
    assert_eq!(mine[0].state, TcpState::Established);
    assert_eq!(mine[0].remote, addr);
    assert_eq!(mine[0].cookie, cookie(&c));
    // The AF_INET dump does not repeat IPv6 sockets.
    assert!(
        census
            .sockets
            .iter()
            .all(|s| s.local.port() != addr.port() || s.family == Family::Ipv6)
    );
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn request_socket_while_final_ack_is_dropped() {
    let ns = Netns::new("census-req");
    let l = ns.run(|| listener("127.0.0.1:0", 8));
    let addr = l.local_addr().unwrap();
    // Drop the client's final ACK on the server's input: the handshake stays
    // half-open on the server, a request socket, while the client is established.
    ns.nft(&format!(
        "table inet census {{\n chain input {{\n type filter hook input priority 0;\n \
         tcp dport {} tcp flags & (syn | ack) == ack drop\n }}\n}}\n",
        addr.port()
    ));
    let client = ns.run(move || TcpStream::connect(addr).unwrap());
    let local = client.local_addr().unwrap();
    let (c, req) = wait_for(&ns, 1, |s| s.local == addr && s.remote == local);
    let req = &req[0];
    assert_eq!(req.state, TcpState::NewSynRecv);
    assert!(!req.timewait);
    assert_eq!((req.inode, req.uid), (0, 0));
    assert!(req.timer_left_ms.is_some(), "SYN-ACK retransmit timer");
    assert_ne!(req.cookie, 0);
    let listen = c.sockets.iter().find(|s| s.local == addr).unwrap();
    assert_eq!((listen.state, listen.recv_q), (TcpState::Listen, 0));
    let mine = c.sockets.iter().find(|s| s.local == local).unwrap();
    assert_eq!(mine.state, TcpState::Established);
}

#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn namespaces_lists_every_namespace_once() {
    let ns = Netns::new("census-ns");
    let all = census::namespaces();
    let mine = all
        .iter()
        .find(|n| u64::from(n.inode) == ns.inode)
        .expect("the test namespace");
    assert_eq!(
        mine.path,
        std::path::Path::new(&format!("/run/netns/{}", ns.name))
    );
    let host = census::netns_inode("/proc/self/ns/net".as_ref()).unwrap();
    assert!(all.iter().any(|n| n.inode == host));
    let mut inodes: Vec<u32> = all.iter().map(|n| n.inode).collect();
    inodes.dedup();
    assert_eq!(inodes.len(), all.len(), "sorted and distinct");

    let every = census::dump_all(None).unwrap();
    assert!(every.iter().any(|c| u64::from(c.inode) == ns.inode));
    assert!(every.iter().any(|c| c.inode == host));
    assert!(
        census::dump_all(Some(1)).is_err(),
        "no namespace has inode 1"
    );
}

/// The census cookie is the one the tracer's BPF programs saw
/// (bpf_get_socket_cookie), for a full socket and after it became a timewait one.
#[test]
#[ignore = "needs root and a BTF kernel: run `cargo xtask test`"]
fn cookies_match_the_tracer() {
    let ns = Netns::new("census-cookie");
    let trace = Trace::events(&ns, &[]);
    let (l, clients) = time_wait_pairs(&ns, "127.0.0.1:0", 1);
    let addr = l.local_addr().unwrap();
    let (c, _) = wait_for(&ns, 1, |s| s.remote == addr && s.timewait);
    let events = trace.stop_json();

    let listen = c.sockets.iter().find(|s| s.local == addr).unwrap();
    let traced: Vec<_> = of_local(&events, &addr)
        .into_iter()
        .filter(|e| e["new"] == "LISTEN")
        .collect();
    assert_eq!(traced.len(), 1, "{events:#?}");
    assert_eq!(traced[0]["sock"].as_u64(), Some(listen.cookie));

    let (client, so_cookie) = clients[0];
    let tw = c.sockets.iter().find(|s| s.local == client).unwrap();
    assert_eq!(tw.cookie, so_cookie);
    let traced = of_local(&events, &client);
    assert!(traced.len() >= 3, "{traced:#?}");
    assert!(
        traced.iter().all(|e| e["sock"].as_u64() == Some(tw.cookie)),
        "census {} vs traced {traced:#?}",
        tw.cookie
    );
}
