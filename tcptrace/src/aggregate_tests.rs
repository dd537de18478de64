//! Aggregator tests with synthetic event sequences.

use std::net::SocketAddr;

use super::*;
use crate::event::Task;
use crate::tcp::Family;
use TcpState::*;

const MS: u64 = 1_000_000;

struct World {
    tracker: Tracker,
    agg: Aggregator,
    reasons: ResetReasons,
}

impl World {
    fn new(cfg: AggregatorConfig) -> Self {
        Self {
            tracker: Tracker::new(1_000),
            agg: Aggregator::new(cfg, 0),
            reasons: ResetReasons::from_pairs([(1, "NO_SOCKET"), (11, "TCP_ABORT_ON_CLOSE")]),
        }
    }

    fn feed(&mut self, ev: &Event) {
        let note = self.tracker.observe(ev);
        self.agg.add(ev, &note, &self.tracker);
    }

    fn snap(&mut self, now_ns: u64) -> Snapshot {
        self.agg
            .snapshot(&self.tracker, now_ns, "t".into(), &self.reasons)
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ev(ts_ns: u64, id: u64, local: &str, remote: &str, detail: Detail) -> Event {
    Event {
        ts_ns,
        sock_id: id,
        id_is_addr: false,
        caught: false,
        netns: 1,
        family: Family::Ipv4,
        local: addr(local),
        remote: addr(remote),
        task: None,
        detail,
    }
}

fn st(old: TcpState, new: TcpState) -> Detail {
    Detail::State {
        old,
        new,
        srtt_us: None,
        total_retrans: None,
    }
}

/// A listener on :8080 and one passive connection from `client` that sits
/// `close_wait_ns` in CLOSE_WAIT; socket ids from `id`.
fn passive(w: &mut World, t0: u64, id: u64, client: &str, close_wait_ns: u64) {
    let l = "10.0.0.1:8080";
    w.feed(&ev(t0, id, l, client, st(Listen, SynRecv)));
    w.feed(&Event {
        detail: Detail::State {
            old: SynRecv,
            new: Established,
            srtt_us: Some(40),
            total_retrans: Some(0),
        },
        ..ev(t0 + 20_000, id, l, client, st(SynRecv, Established))
    });
    w.feed(&ev(t0 + MS, id, l, client, st(Established, CloseWait)));
    w.feed(&ev(
        t0 + MS + close_wait_ns,
        id,
        l,
        client,
        st(CloseWait, LastAck),
    ));
    w.feed(&ev(
        t0 + 2 * MS + close_wait_ns,
        id,
        l,
        client,
        st(LastAck, Close),
    ));
}

fn listener(w: &mut World) {
    let mut listen = ev(0, 1, "10.0.0.1:8080", "0.0.0.0:0", st(Close, Listen));
    listen.task = Some(Task {
        pid: 42,
        comm: "server".into(),
        cgroup_id: 1,
    });
    w.feed(&listen);
}

#[test]
fn passive_sockets_count_on_the_local_port_with_dwell_histograms() {
    let mut w = World::new(AggregatorConfig::default());
    listener(&mut w);
    for i in 0..50 {
        passive(
            &mut w,
            i * 1_000 * MS,
            100 + i,
            &format!("10.0.0.2:{}", 40_000 + i),
            (300 + i) * MS,
        );
    }
    let s = w.snap(60_000 * MS);
    let row = s.port(8080, Direction::In).unwrap();
    assert!(row.listening);
    assert_eq!(row.transitions, 50 * 5 + 1);
    let cw = &row.states[&CloseWait];
    assert_eq!(
        (cw.entered, cw.exits[&LastAck], cw.dwell_unknown),
        (50, 50, 0)
    );
    let d = cw.dwell.as_ref().unwrap();
    assert_eq!(d.count, 50);
    // 300..=349 ms, to 2 significant digits (the histogram reports the low
    // end of a value's bucket for min and the high end for max; buckets are
    // 2,048 µs wide there)
    assert_eq!((d.min_us, d.max_us), (299_008, 350_207));
    assert!((322_000..=327_500).contains(&d.p50_us), "{}", d.p50_us);
    assert_eq!(d.buckets.iter().map(|b| b.count).sum::<u64>(), 50);
    assert_eq!(d.buckets.len(), 1, "all within (65.5 ms, 262 ms * 4]");
    assert_eq!(row.handshakes.completed, 50);
    assert_eq!(row.handshakes.time.as_ref().unwrap().p50_us, 40);
    assert_eq!(row.states[&Listen].now, 1);
    assert!(s.port(40_000, Direction::Out).is_none());
}

#[test]
fn active_sockets_count_on_the_remote_port() {
    let mut w = World::new(AggregatorConfig::default());
    let (l, r) = ("10.0.0.1:51000", "10.0.0.9:5432");
    w.feed(&ev(0, 7, "10.0.0.1:0", r, st(Close, SynSent)));
    w.feed(&ev(2 * MS, 7, l, r, st(SynSent, Established)));
    let s = w.snap(10 * MS);
    let row = s.port(5432, Direction::Out).unwrap();
    // 2 ms reads as the top of its 8 µs bucket
    assert_eq!(row.states[&SynSent].dwell.as_ref().unwrap().max_us, 2_007);
    assert_eq!(row.states[&Established].now, 1);
    assert_eq!(row.states[&Established].oldest_s, Some(0.008));
    assert!(row.states[&Established].oldest_exact);
    assert_eq!(s.ports.len(), 1);
}

#[test]
fn mid_life_sockets_go_to_a_listening_local_port_else_the_remote_port() {
    let mut w = World::new(AggregatorConfig::default());
    listener(&mut w);
    // Seen first in ESTABLISHED: unknown origin, unknown dwell.
    w.feed(&ev(
        MS,
        20,
        "10.0.0.1:8080",
        "10.0.0.2:40000",
        st(Established, CloseWait),
    ));
    w.feed(&ev(
        MS,
        21,
        "10.0.0.1:50000",
        "10.0.0.3:443",
        st(Established, FinWait1),
    ));
    let s = w.snap(2 * MS);
    let inbound = s.port(8080, Direction::In).unwrap();
    assert_eq!(inbound.states[&Established].dwell_unknown, 1);
    assert!(
        inbound.states[&Established].dwell.is_none(),
        "unknown dwells are never recorded as 0"
    );
    assert_eq!(inbound.states[&CloseWait].now, 1);
    let outbound = s.port(443, Direction::Out).unwrap();
    assert_eq!(outbound.states[&FinWait1].now, 1);
}

#[test]
fn unknown_origin_with_only_an_ephemeral_remote_port_is_inbound() {
    let eph = DEFAULT_EPHEMERAL;
    let (server, client) = (addr("10.0.0.1:8080"), addr("10.0.0.2:40000"));
    assert_eq!(
        attribute(Origin::Unknown, &server, &client, false, &eph),
        (8080, Direction::In)
    );
    assert_eq!(
        attribute(Origin::Unknown, &client, &server, false, &eph),
        (8080, Direction::Out)
    );
    // Both ephemeral, nobody listening: the remote port, as for any client.
    let other = addr("10.0.0.3:45000");
    assert_eq!(
        attribute(Origin::Unknown, &client, &other, false, &eph),
        (45000, Direction::Out)
    );
    // A known origin wins over the hint.
    assert_eq!(
        attribute(Origin::Active, &server, &client, false, &eph),
        (40000, Direction::Out)
    );
}

#[test]
fn resets_are_counted_by_reason_state_before_and_the_state_they_hit() {
    let mut w = World::new(AggregatorConfig::default());
    for i in 0..20 {
        let client = format!("10.0.0.1:{}", 30_000 + i);
        let id = 500 + i;
        w.feed(&ev(
            i * MS,
            id,
            "10.0.0.1:0",
            "10.0.0.2:9",
            st(Close, SynSent),
        ));
        w.feed(&ev(
            i * MS + 10,
            0,
            "10.0.0.2:9",
            &client,
            Detail::SendReset {
                state: None,
                reason: Some(1),
            },
        ));
        w.feed(&ev(
            i * MS + 20,
            id,
            &client,
            "10.0.0.2:9",
            Detail::RecvReset { state: SynSent },
        ));
        w.feed(&ev(
            i * MS + 30,
            id,
            &client,
            "10.0.0.2:9",
            st(SynSent, Close),
        ));
    }
    // An abort on close from an accepted socket on :8080.
    listener(&mut w);
    w.feed(&ev(
        50 * MS,
        900,
        "10.0.0.1:8080",
        "10.0.0.5:1000",
        st(Listen, SynRecv),
    ));
    w.feed(&ev(
        50 * MS,
        900,
        "10.0.0.1:8080",
        "10.0.0.5:1000",
        st(SynRecv, Established),
    ));
    w.feed(&ev(
        60 * MS,
        900,
        "10.0.0.1:8080",
        "10.0.0.5:1000",
        st(Established, Close),
    ));
    w.feed(&ev(
        60 * MS + 5,
        900,
        "10.0.0.1:8080",
        "10.0.0.5:1000",
        Detail::SendReset {
            state: Some(Close),
            reason: Some(11),
        },
    ));
    let s = w.snap(100 * MS);
    let closed = s.port(9, Direction::In).unwrap();
    assert_eq!(
        closed.resets_sent,
        [ResetCount {
            reason: "NO_SOCKET".into(),
            state_before: None,
            count: 20
        }]
    );
    let client = s.port(9, Direction::Out).unwrap();
    assert_eq!(client.resets_received, BTreeMap::from([(SynSent, 20)]));
    assert_eq!(client.states[&SynSent].exits[&Close], 20);
    let server = s.port(8080, Direction::In).unwrap();
    assert_eq!(
        server.resets_sent,
        [ResetCount {
            reason: "TCP_ABORT_ON_CLOSE".into(),
            state_before: Some(Established),
            count: 1
        }]
    );
    assert_eq!(server.resets_sent_total(), 1);
}

#[test]
fn resets_after_long_in_established_are_counted_apart() {
    const S: u64 = 1_000_000_000;
    let mut w = World::new(AggregatorConfig {
        long_established_ns: 120 * S,
        ..AggregatorConfig::default()
    });
    let r = "10.0.0.9:443";
    // Three outbound connections, reset by the peer after 10 s, 119 s and
    // 121 s in ESTABLISHED: only the last one was established that long.
    for (id, established_s) in [(1u64, 10u64), (2, 119), (3, 121)] {
        let l = format!("10.0.0.1:{}", 50_000 + id);
        w.feed(&ev(0, id, "10.0.0.1:0", r, st(Close, SynSent)));
        w.feed(&ev(MS, id, &l, r, st(SynSent, Established)));
        let at = MS + established_s * S;
        w.feed(&ev(at, id, &l, r, Detail::RecvReset { state: Established }));
        w.feed(&ev(at + 10, id, &l, r, st(Established, Close)));
    }
    // A reset in CLOSE_WAIT after long never counts: not ESTABLISHED.
    w.feed(&ev(0, 4, "10.0.0.1:0", r, st(Close, SynSent)));
    w.feed(&ev(MS, 4, "10.0.0.1:50004", r, st(SynSent, Established)));
    w.feed(&ev(
        2 * MS,
        4,
        "10.0.0.1:50004",
        r,
        st(Established, CloseWait),
    ));
    w.feed(&ev(
        300 * S,
        4,
        "10.0.0.1:50004",
        r,
        Detail::RecvReset { state: CloseWait },
    ));
    // A socket that predates tracing, seen ESTABLISHED at 0: its age is a
    // lower bound, and a lower bound of 200 s is long enough.
    w.tracker
        .seed(5, Established, 1, addr("10.0.0.1:50005"), addr(r), 0);
    w.feed(&ev(
        200 * S,
        5,
        "10.0.0.1:50005",
        r,
        Detail::RecvReset { state: Established },
    ));
    let s = w.snap(301 * S);
    let row = s.port(443, Direction::Out).unwrap();
    assert_eq!(
        row.resets_received,
        BTreeMap::from([(Established, 4), (CloseWait, 1)])
    );
    assert_eq!(row.resets_received_long_established, 2);

    // The threshold can change once tracing runs; later resets use it.
    w.agg.set_long_established_ns(5 * S);
    w.feed(&ev(0, 6, "10.0.0.1:0", r, st(Close, SynSent)));
    w.feed(&ev(MS, 6, "10.0.0.1:50006", r, st(SynSent, Established)));
    w.feed(&ev(
        10 * S,
        6,
        "10.0.0.1:50006",
        r,
        Detail::RecvReset { state: Established },
    ));
    let s = w.snap(302 * S);
    assert_eq!(
        s.port(443, Direction::Out)
            .unwrap()
            .resets_received_long_established,
        3
    );
}

#[test]
fn synack_retransmits_handshake_times_and_failed_handshakes() {
    let mut w = World::new(AggregatorConfig {
        synack_retries: 2,
        ..AggregatorConfig::default()
    });
    listener(&mut w);
    let synack = |retrans, since_first_us| Detail::SynackRetrans {
        retrans,
        since_first_us,
    };
    // Request A: two retransmits, then completes 500 ms after the second.
    w.feed(&ev(
        1_000 * MS,
        1,
        "10.0.0.1:8080",
        "10.0.0.7:1111",
        synack(1, 1_000_000),
    ));
    w.feed(&ev(
        3_000 * MS,
        1,
        "10.0.0.1:8080",
        "10.0.0.7:1111",
        synack(2, 3_000_000),
    ));
    w.feed(&ev(
        3_500 * MS,
        50,
        "10.0.0.1:8080",
        "10.0.0.7:1111",
        st(Listen, SynRecv),
    ));
    w.feed(&ev(
        3_500 * MS,
        50,
        "10.0.0.1:8080",
        "10.0.0.7:1111",
        st(SynRecv, Established),
    ));
    // Request B: retransmitted up to the limit, never completes.
    w.feed(&ev(
        1_000 * MS,
        1,
        "10.0.0.1:8080",
        "10.0.0.8:2222",
        synack(1, 1_000_000),
    ));
    w.feed(&ev(
        3_000 * MS,
        1,
        "10.0.0.1:8080",
        "10.0.0.8:2222",
        synack(2, 3_000_000),
    ));
    // Not failed yet: the request lives until the next timeout (4 s later).
    let s = w.snap(6_000 * MS);
    let row = s.port(8080, Direction::In).unwrap();
    assert_eq!(
        (
            row.synack_retrans,
            row.handshakes.completed,
            row.handshakes.failed
        ),
        (4, 1, 0)
    );
    let hs = row.handshakes.time.as_ref().unwrap();
    // 3.5 s, within the histogram's 1%
    assert!(
        (3_490_000..=3_535_000).contains(&hs.max_us),
        "{}",
        hs.max_us
    );
    let s = w.snap(8_000 * MS);
    assert_eq!(s.port(8080, Direction::In).unwrap().handshakes.failed, 1);
    let s = w.snap(20_000 * MS);
    assert_eq!(
        s.port(8080, Direction::In).unwrap().handshakes.failed,
        1,
        "counted once"
    );
}

#[test]
fn ports_beyond_the_cap_fold_into_other() {
    let mut w = World::new(AggregatorConfig {
        max_ports: 2,
        ..AggregatorConfig::default()
    });
    for (i, port) in [80u16, 443, 5432, 6379, 6379, 9000].iter().enumerate() {
        let id = 10 + i as u64;
        w.feed(&ev(
            0,
            id,
            "10.0.0.1:0",
            &format!("10.0.0.2:{port}"),
            st(Close, SynSent),
        ));
    }
    let s = w.snap(MS);
    let keys: Vec<(Option<u16>, Direction)> =
        s.ports.iter().map(|p| (p.port, p.direction)).collect();
    assert_eq!(
        keys,
        [
            (Some(80), Direction::Out),
            (Some(443), Direction::Out),
            (None, Direction::Out)
        ]
    );
    assert_eq!(s.ports[2].states[&SynSent].now, 4);
    assert_eq!(s.ports[2].transitions, 4);
    assert_eq!(s.events.folded_ports, 3);
}

#[test]
fn census_seeded_sockets_show_lower_bound_ages() {
    let mut w = World::new(AggregatorConfig::default());
    w.tracker
        .seed(1, Listen, 1, addr("10.0.0.1:8080"), addr("0.0.0.0:0"), 0);
    for i in 0..10 {
        w.tracker.seed(
            10 + i,
            CloseWait,
            1,
            addr("10.0.0.1:8080"),
            addr(&format!("10.0.0.2:{}", 100 + i)),
            0,
        );
    }
    let mut census = CensusView::default();
    census
        .timewait
        .insert((8080, Direction::In, TimeWait), (3, 41_000));
    census
        .accept_queues
        .insert(8080, AcceptQueue { len: 2, max: 128 });
    w.agg.set_census(census);
    w.agg.set_lost(7, 0);
    let s = w.snap(5_000 * MS);
    let row = s.port(8080, Direction::In).unwrap();
    let cw = &row.states[&CloseWait];
    assert_eq!(
        (cw.now, cw.oldest_s, cw.oldest_exact),
        (10, Some(5.0), false)
    );
    let tw = &row.states[&TimeWait];
    assert_eq!(
        (tw.now, tw.oldest_s, tw.oldest_exact),
        (3, Some(41.0), true)
    );
    assert_eq!(row.accept_queue, Some(AcceptQueue { len: 2, max: 128 }));
    assert_eq!(row.oldest.len(), 10);
    assert!(row.oldest.iter().all(|o| o.state == CloseWait && !o.exact));
    assert_eq!(s.events.lost, 7);
    assert_eq!(s.sockets_tracked, 11);
}

#[test]
fn other_namespaces_are_left_out_when_one_is_chosen() {
    let mut w = World::new(AggregatorConfig {
        netns: Some(2),
        ..AggregatorConfig::default()
    });
    w.feed(&ev(0, 1, "10.0.0.1:0", "10.0.0.2:80", st(Close, SynSent)));
    let s = w.snap(MS);
    assert!(s.ports.is_empty());
    assert_eq!(s.events.total, 1, "still counted as seen");
}

#[test]
fn dwell_summary_handles_extremes() {
    fn record_into(h: &mut Histogram<u64>, us: u64) {
        let mut slot = Some(h.clone());
        record(&mut slot, us);
        *h = slot.unwrap();
    }
    let mut h = new_histogram();
    record_into(&mut h, 0);
    record_into(&mut h, MAX_RECORD_US * 2);
    let d = dwell_summary(&h);
    assert_eq!(d.count, 2);
    assert!(d.max_us >= MAX_RECORD_US * 999 / 1000 && d.max_us <= MAX_RECORD_US * 1001 / 1000);
    assert_eq!(d.buckets.iter().map(|b| b.count).sum::<u64>(), 2);
    assert_eq!(d.buckets[0], Bucket { le_us: 1, count: 1 });
}

/// Passive connections, an active one to :6379 and a refused connect, all
/// done within `t0 .. t0 + 400 ms`; socket ids from `id`.
fn mixed(w: &mut World, t0: u64, id: u64, close_wait_ms: &[u64]) {
    for (i, cw) in close_wait_ms.iter().enumerate() {
        let client = format!("10.0.0.2:{}", 40_000 + id + i as u64);
        passive(w, t0 + i as u64 * MS, id + i as u64, &client, cw * MS);
    }
    let a = id + 100;
    let (local, redis) = ("10.0.0.1:41000", "10.0.0.3:6379");
    w.feed(&ev(t0, a, "10.0.0.1:0", redis, st(Close, SynSent)));
    w.feed(&ev(t0 + 50_000, a, local, redis, st(SynSent, Established)));
    w.feed(&ev(t0 + 9 * MS, a, local, redis, st(Established, Close)));
    w.feed(&ev(
        t0 + 9 * MS + 10,
        a,
        local,
        redis,
        Detail::SendReset {
            state: Some(Close),
            reason: Some(11),
        },
    ));
    let r = id + 200;
    let (local, closed) = ("10.0.0.1:41001", "10.0.0.4:9");
    w.feed(&ev(t0 + MS, r, "10.0.0.1:0", closed, st(Close, SynSent)));
    w.feed(&ev(
        t0 + MS + 20,
        r,
        local,
        closed,
        Detail::RecvReset { state: SynSent },
    ));
    w.feed(&ev(t0 + MS + 30, r, local, closed, st(SynSent, Close)));
}

#[test]
fn an_interval_is_the_cumulative_aggregate_minus_its_start() {
    // One aggregator sees two phases; a second, fresh at the boundary, sees
    // only the second. The first's aggregates since the boundary must be the
    // second's, row for row, histogram for histogram.
    let t1 = 1_000 * MS;
    let mut all = World::new(AggregatorConfig::default());
    listener(&mut all);
    mixed(&mut all, MS, 10, &[300, 5]);
    // A port used only before the boundary has no row in the interval.
    all.feed(&ev(
        2 * MS,
        90,
        "10.0.0.1:0",
        "10.0.0.5:5432",
        st(Close, SynSent),
    ));
    all.feed(&ev(
        3 * MS,
        90,
        "10.0.0.1:0",
        "10.0.0.5:5432",
        st(SynSent, Close),
    ));
    all.agg.add_undecodable(2);
    all.agg.set_lost(5, 2);
    let base = all.agg.clone();

    let mut second = World::new(AggregatorConfig::default());
    listener(&mut second);
    second.agg = Aggregator::new(AggregatorConfig::default(), t1);
    for w in [&mut all, &mut second] {
        mixed(w, t1 + MS, 1_000, &[7, 120, 40]);
        w.agg.add_undecodable(1);
    }
    // Lost counts are cumulative: 4 more, 3 of them skipped runs.
    all.agg.set_lost(9, 5);
    second.agg.set_lost(4, 3);
    let t2 = t1 + 500 * MS;
    let interval = all
        .agg
        .since(&base, t1)
        .snapshot(&all.tracker, t2, "t".into(), &all.reasons);
    let expected = second.snap(t2);
    assert_eq!(interval, expected);
    // The fixture is not trivial: rows, dwell histograms and resets.
    let ports: Vec<_> = expected.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [Some(9), Some(6379), Some(8080)]);
    assert_eq!(expected.events.total, 3 * 5 + 4 + 3);
    assert_eq!(expected.events.undecodable, 1);
    assert_eq!((expected.events.lost, expected.events.lost_skipped), (4, 3));
    let cw = expected.ports[2].states[&CloseWait].dwell.as_ref().unwrap();
    // 7 and 120 ms read as the bottom and top of their buckets (32 and 512
    // µs wide there).
    assert_eq!((cw.count, cw.min_us, cw.max_us), (3, 6_976, 120_319));
    // And the cumulative view still has everything.
    let total = all.snap(t2);
    assert_eq!(
        total.events.total,
        1 + (2 * 5 + 4 + 3) + 2 + (3 * 5 + 4 + 3)
    );
    assert_eq!(total.ports.len(), 4);
}
