//! Replay benchmark: decode + tracking + aggregation over a synthetic stream
//! of kernel records, on one core. Target (DESIGN.md, "Performance budget"):
//! at least 10 M events/s for the whole pipeline. Printed, not asserted.
//!
//! The stream is what loopback churn looks like to the daemon: listeners on
//! 100 ports in two namespaces, then connections opened every 20 µs that live
//! from 50 µs to a second, interleaved by time. Most close cleanly from either
//! side; some reset, some are refused, some need SYN-ACK or data retransmits.
//! Records are made by `event::encode(...).to_bytes()`, exactly the bytes the
//! ring buffer hands the reader.
//!
//! Benchmarks, each over the same stream, in events/s, with a tracker and
//! aggregators that have seen the stream once already (a daemon in steady
//! state: every row and histogram exists):
//! - `decode`: bytes to typed events only;
//! - `decode_track`: plus the socket tracker (time in state, owner, origin);
//! - `decode_track_aggregate`: plus the aggregator (the target's pipeline);
//! - `daemon_pipeline`: plus the daemon's flight recorder, which keeps a
//!   copy of every record, as `Session::drain` does;
//! - `decode_track_aggregate_cold`: a fresh tracker and aggregator each
//!   time, which allocate every row and histogram as they meet them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use tcptrace::aggregate::{Aggregator, AggregatorConfig};
use tcptrace::event::{self, Detail, Event, Task};
use tcptrace::flight::{DEFAULT_FLIGHT_EVENTS, FlightArgs, FlightRecorder};
use tcptrace::session::{self, MAX_TRACKED_SOCKETS};
use tcptrace::tcp::{Family, TcpState};
use tcptrace::track::Tracker;

use TcpState::{
    Close, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent,
};

/// Connections in the stream (about 9.3 events each).
const CONNECTIONS: u32 = 12_000;
const PORTS: u16 = 100;
const BASE_PORT: u16 = 8000;
const NETNS: [u32; 2] = [4_026_531_840, 4_026_532_001];
/// One connection opens every this many ns (50,000 connections/s).
const OPEN_EVERY_NS: u64 = 20_000;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        comm: comm.into(),
        cgroup_id: 4242,
    }
}

/// Builds events for one socket.
struct Sock {
    id: u64,
    netns: u32,
    local: SocketAddr,
    remote: SocketAddr,
}

impl Sock {
    fn event(&self, ts_ns: u64, detail: Detail) -> Event {
        Event {
            ts_ns,
            sock_id: self.id,
            id_is_addr: false,
            caught: false,
            netns: self.netns,
            family: Family::Ipv4,
            local: self.local,
            remote: self.remote,
            task: None,
            detail,
        }
    }

    fn state(&self, ts_ns: u64, old: TcpState, new: TcpState) -> Event {
        let established = new == Established;
        self.event(
            ts_ns,
            Detail::State {
                old,
                new,
                srtt_us: established.then_some(30),
                total_retrans: established.then_some(0),
            },
        )
    }
}

/// How a generated connection goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    ClientClose,
    ServerClose,
    Reset,
    Refused,
    SynackRetrans,
    DataRetrans,
}

fn shape(rng: &mut Rng) -> Shape {
    match rng.below(100) {
        0..70 => Shape::ClientClose,
        70..80 => Shape::ServerClose,
        80..88 => Shape::Reset,
        88..92 => Shape::Refused,
        92..96 => Shape::SynackRetrans,
        _ => Shape::DataRetrans,
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one match arm per connection shape reads best in one place"
)]
fn connection(rng: &mut Rng, i: u32, ids: &mut u64, out: &mut Vec<Event>) {
    let t0 = u64::from(i) * OPEN_EVERY_NS + rng.below(OPEN_EVERY_NS);
    let port = BASE_PORT + (rng.below(u64::from(PORTS)) as u16);
    let netns = NETNS[usize::from(rng.below(10) == 0)];
    let client_ip = IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8));
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let client = SocketAddr::new(client_ip, 32_768 + (i % 28_000) as u16);
    *ids += 2;
    let c = Sock {
        id: *ids,
        netns,
        local: client,
        remote: server,
    };
    let s = Sock {
        id: *ids + 1,
        netns,
        local: server,
        remote: client,
    };
    // Most live under a few ms; one in a hundred holds on for up to a second.
    let hold = if rng.below(100) == 0 {
        1_000_000 + rng.below(1_000_000_000)
    } else {
        50_000 + rng.below(5_000_000)
    };
    let mut connect = c.state(t0, Close, SynSent);
    connect.task = Some(task(7000 + i % 8, "client"));
    // Before connect() picks the port, the tracepoint shows source port 0.
    connect.local.set_port(0);
    out.push(connect);
    let shape = shape(rng);
    let mut t = t0 + 15_000;
    if let Shape::Refused = shape {
        // No socket matched the SYN: the kernel reports no cookie.
        let nobody = Sock { id: 0, ..s };
        out.push(nobody.event(
            t,
            Detail::SendReset {
                state: None,
                reason: Some(1),
            },
        ));
        out.push(c.event(t + 3_000, Detail::RecvReset { state: SynSent }));
        out.push(c.state(t + 4_000, SynSent, Close));
        return;
    }
    if let Shape::SynackRetrans = shape {
        let listener = Sock {
            id: listener_id(port, netns),
            netns,
            local: server,
            remote: client,
        };
        for r in 1..=1 + rng.below(2) {
            t += 1_000_000_000 << (r - 1);
            out.push(listener.event(
                t,
                Detail::SynackRetrans {
                    retrans: r as u32,
                    since_first_us: (t - t0) / 1_000,
                },
            ));
        }
        t += 50_000;
    }
    out.push(c.state(t, SynSent, Established));
    out.push(s.state(t + 5_000, Listen, SynRecv));
    out.push(s.state(t + 25_000, SynRecv, Established));
    t += 25_000 + hold;
    match shape {
        Shape::ClientClose | Shape::SynackRetrans | Shape::DataRetrans => {
            if let Shape::DataRetrans = shape {
                out.push(c.event(
                    t - hold / 2,
                    Detail::Retrans {
                        state: Established,
                        total_retrans: 1,
                    },
                ));
            }
            out.push(c.state(t, Established, FinWait1));
            out.push(s.state(t + 8_000, Established, CloseWait));
            out.push(c.state(t + 10_000, FinWait1, FinWait2));
            out.push(s.state(t + 30_000, CloseWait, LastAck));
            out.push(s.state(t + 40_000, LastAck, Close));
            out.push(c.state(t + 42_000, FinWait2, Close));
        }
        Shape::ServerClose => {
            out.push(s.state(t, Established, FinWait1));
            out.push(c.state(t + 8_000, Established, CloseWait));
            out.push(s.state(t + 10_000, FinWait1, FinWait2));
            out.push(c.state(t + 30_000, CloseWait, LastAck));
            out.push(c.state(t + 40_000, LastAck, Close));
            out.push(s.state(t + 42_000, FinWait2, Close));
        }
        Shape::Reset => {
            out.push(c.state(t, Established, Close));
            out.push(s.event(t + 5_000, Detail::RecvReset { state: Established }));
            out.push(s.state(t + 6_000, Established, Close));
            out.push(c.event(
                t + 9_000,
                Detail::SendReset {
                    state: Some(Close),
                    reason: Some(3),
                },
            ));
        }
        Shape::Refused => unreachable!("handled above"),
    }
}

fn listener_id(port: u16, netns: u32) -> u64 {
    (1 << 60) | (u64::from(netns) << 16) | u64::from(port)
}

/// The records, back to back, as the ring hands them over; and their number.
fn stream() -> (Vec<u8>, usize) {
    let mut events = Vec::new();
    for netns in NETNS {
        for p in 0..PORTS {
            let port = BASE_PORT + p;
            let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            let l = Sock {
                id: listener_id(port, netns),
                netns,
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                remote: any,
            };
            let mut ev = l.state(0, Close, Listen);
            ev.task = Some(task(100 + u32::from(p), "server"));
            events.push(ev);
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ids = 0;
    for i in 0..CONNECTIONS {
        connection(&mut rng, i, &mut ids, &mut events);
    }
    // The ring is in submission order, which is (nearly) time order.
    events.sort_by_key(|e| e.ts_ns);
    let n = events.len();
    let bytes = events
        .iter()
        .flat_map(|e| event::encode(e).to_bytes())
        .collect();
    (bytes, n)
}

fn fresh() -> (Tracker, Aggregator) {
    (
        Tracker::new(MAX_TRACKED_SOCKETS),
        Aggregator::new(AggregatorConfig::default(), 0),
    )
}

/// The daemon's flight recorder with its default size.
fn flight_recorder() -> FlightRecorder {
    let args = FlightArgs {
        flight_events: DEFAULT_FLIGHT_EVENTS,
        flight_dir: None,
        triggers: Vec::new(),
        trigger_cooldown: Duration::from_mins(5),
    };
    FlightRecorder::new(&args, None, None, 0, 0)
        .expect("default flight-recorder flags are valid")
        .expect("the default flight recorder is on")
}

/// Feeds every record through the daemon's per-event path.
fn replay_into(
    bytes: &[u8],
    size: usize,
    mut flight: Option<&mut FlightRecorder>,
    tracker: &mut Tracker,
    agg: &mut Aggregator,
) {
    for rec in bytes.chunks_exact(size) {
        session::ingest(rec, flight.as_deref_mut(), tracker, agg);
    }
}

/// A tracker and aggregator that have seen the stream once: every port's
/// rows and histograms exist, as in a daemon that has been running a while.
fn warm() -> (Tracker, Aggregator, Vec<u8>, usize) {
    let (bytes, n) = stream();
    let size = bytes.len() / n;
    let (mut tracker, mut agg) = fresh();
    replay_into(&bytes, size, None, &mut tracker, &mut agg);
    (tracker, agg, bytes, size)
}

fn replay(c: &mut Criterion) {
    let (mut tracker, mut agg, bytes, size) = warm();
    let mut flight = flight_recorder();
    let n = bytes.len() / size;
    println!(
        "replay: {n} events ({size}-byte records, {CONNECTIONS} connections, {PORTS} ports x {} namespaces); \
         target: decode_track_aggregate >= 10 M events/s on one core",
        NETNS.len()
    );
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(n as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for rec in bytes.chunks_exact(size) {
                let _ = black_box(event::decode(black_box(rec)));
            }
        });
    });
    g.bench_function("decode_track", |b| {
        b.iter(|| {
            for rec in bytes.chunks_exact(size) {
                if let Ok(ev) = event::decode(rec) {
                    black_box(tracker.observe(&ev));
                }
            }
        });
    });
    g.bench_function("decode_track_aggregate", |b| {
        b.iter(|| replay_into(&bytes, size, None, &mut tracker, &mut agg));
    });
    g.bench_function("daemon_pipeline", |b| {
        b.iter(|| replay_into(&bytes, size, Some(&mut flight), &mut tracker, &mut agg));
    });
    // A fresh aggregator meets every port and state for the first time and
    // allocates its histograms, as after the daemon starts.
    g.bench_function("decode_track_aggregate_cold", |b| {
        b.iter_batched_ref(
            fresh,
            |(tracker, agg)| replay_into(&bytes, size, None, tracker, agg),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    replay(&mut c);
    c.final_summary();
}
