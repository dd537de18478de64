//! A tracing session: the loaded programs, the ring reader, the socket
//! tracker and the aggregator, wired together. `watch` and the daemon drive
//! one; it knows nothing of terminals or HTTP.

use std::collections::HashSet;

use anyhow::Result;

use crate::aggregate::{Aggregator, AggregatorConfig, CensusView, attribute};
use crate::census::NetnsCensus;
use crate::cli::TraceArgs;
use crate::clock::Clock;
use crate::event;
use crate::findings::{self, FindingsConfig};
use crate::loader::{Attachment, Tracer, TracerConfig};
use crate::reader::Reader;
use crate::reasons::ResetReasons;
use crate::snapshot::{AcceptQueue, Snapshot};
use crate::tcp::TcpState;
use crate::track::{Origin, Tracker};

/// Live sockets followed at most; beyond, new sockets are counted untracked.
pub const MAX_TRACKED_SOCKETS: usize = 1 << 20;

/// What every tracing command starts with: the loaded and attached programs,
/// the kernel's reset-reason names, the clock, and the ring reader.
pub struct Tracing {
    pub tracer: Tracer,
    pub reasons: ResetReasons,
    pub clock: Clock,
    pub reader: Reader,
}

impl Tracing {
    /// Loads the programs, filtering `netns` and `ports` in the kernel, and
    /// logs a warning for each feature lost to a missing hook.
    pub fn start(trace: &TraceArgs, netns: Option<u32>, ports: &[u16]) -> Result<Self> {
        let mut tracer = Tracer::load(&TracerConfig {
            netns,
            ports: ports.to_vec(),
            ..trace.tracer_config()
        })?;
        for w in &tracer.warnings {
            log::warn!("{w}");
        }
        let reasons = ResetReasons::from_btf_file(&trace.btf).unwrap_or_else(|e| {
            log::warn!("reset reasons will print as numbers: {e:#}");
            ResetReasons::default()
        });
        let reader = Reader::new(tracer.take_sources()?, trace.poll_interval)?;
        Ok(Self {
            tracer,
            reasons,
            clock: Clock::now(),
            reader,
        })
    }
}

/// The cumulative aggregator as the current report interval began.
struct Interval {
    base: Aggregator,
    started_ns: u64,
}

pub struct Session {
    pub tracer: Tracer,
    pub reader: Reader,
    pub tracker: Tracker,
    pub agg: Aggregator,
    pub reasons: ResetReasons,
    pub clock: Clock,
    /// The daemon's report intervals: each report is the cumulative
    /// aggregator minus its copy from the interval's start, so every event
    /// is aggregated once.
    interval: Option<Interval>,
    /// Sockets are keyed by cookie, the same id sock_diag reports, so the
    /// census can seed and prune the tracker (not so with classic hooks).
    cookies: bool,
    /// The daemon's flight recorder: keeps the last records drained.
    pub flight: Option<crate::flight::FlightRecorder>,
    /// Thresholds of the findings every snapshot carries.
    findings: FindingsConfig,
}

impl Session {
    /// `ports`: filtered in the kernel (either side), as the aggregator's
    /// namespace is.
    pub fn start(trace: &TraceArgs, cfg: AggregatorConfig, ports: &[u16]) -> Result<Self> {
        let Tracing {
            tracer,
            reasons,
            clock,
            reader,
        } = Tracing::start(trace, cfg.netns, ports)?;
        let cookies = tracer
            .attached
            .iter()
            .any(|(name, how)| *name == "inet_sock_set_state" && *how == Attachment::Btf);
        let findings = FindingsConfig {
            ephemeral: cfg.ephemeral.clone(),
            ..FindingsConfig::default()
        };
        Ok(Self {
            tracer,
            reader,
            tracker: Tracker::new(MAX_TRACKED_SOCKETS),
            agg: Aggregator::new(cfg, Clock::monotonic_now_ns()),
            reasons,
            clock,
            interval: None,
            cookies,
            flight: None,
            findings,
        })
    }

    /// The thresholds of findings (`watch` keeps the defaults, the daemon
    /// takes its config's `[findings]`). Call right after [`Session::start`]:
    /// `half_open_after_s` decides what the aggregators count from then on.
    pub fn set_findings(&mut self, cfg: &FindingsConfig) {
        let long = cfg.half_open_after_ns();
        self.agg.set_long_established_ns(long);
        self.findings = FindingsConfig {
            ephemeral: self.agg.config().ephemeral.clone(),
            ..cfg.clone()
        };
    }

    pub fn findings_config(&self) -> &FindingsConfig {
        &self.findings
    }

    /// Decodes, tracks and aggregates everything waiting in the rings, and
    /// refreshes the lost count. Returns the number of records.
    pub fn drain(&mut self) -> Result<usize> {
        let (tracker, agg) = (&mut self.tracker, &mut self.agg);
        let mut flight = self.flight.as_mut();
        let n = self.reader.drain(|bytes| {
            ingest(bytes, flight.as_deref_mut(), tracker, agg);
        });
        let lost = self.tracer.lost_events(self.tracker.repeats, false)?;
        if let Some(f) = &mut self.flight {
            f.set_lost(lost.total());
        }
        self.agg.set_lost(lost.total(), lost.skipped);
        Ok(n)
    }

    /// The cumulative snapshot (since tracing started), with its findings
    /// over that whole time.
    pub fn snapshot(&mut self) -> Snapshot {
        self.refresh_lost();
        let now = Clock::monotonic_now_ns();
        let time = self.clock.wall_ms(now);
        let mut snap = self.agg.snapshot(&self.tracker, now, time, &self.reasons);
        snap.findings = findings::evaluate(&snap, snap.uptime_s, &self.findings);
        snap
    }

    /// Reads every lost counter now (drains may use a value up to 100 ms
    /// old), so that reports end exact.
    fn refresh_lost(&mut self) {
        match self.tracer.lost_events(self.tracker.repeats, true) {
            Ok(lost) => self.agg.set_lost(lost.total(), lost.skipped),
            Err(e) => log::warn!("lost events: {e:#}; the count shown may be up to 100 ms old"),
        }
    }

    /// Starts report intervals (see [`Session::end_interval`]).
    pub fn start_intervals(&mut self) {
        self.interval = Some(self.new_interval(Clock::monotonic_now_ns()));
    }

    fn new_interval(&self, now: u64) -> Interval {
        Interval {
            base: self.agg.clone(),
            started_ns: now,
        }
    }

    /// The snapshot of the interval that ends now (its duration in seconds),
    /// and a new interval begins. Sockets and census are the current ones.
    pub fn end_interval(&mut self) -> Option<(Snapshot, f64)> {
        self.refresh_lost();
        let now = Clock::monotonic_now_ns();
        // Handshakes that failed by now count in this interval.
        self.agg.settle(now);
        let next = self.new_interval(now);
        let done = std::mem::replace(self.interval.as_mut()?, next);
        let time = self.clock.wall_ms(now);
        let mut agg = self.agg.since(&done.base, done.started_ns);
        let mut snap = agg.snapshot(&self.tracker, now, time, &self.reasons);
        let interval_s = now.saturating_sub(done.started_ns) as f64 / 1e9;
        // Events counted over the interval; sockets now and ages as of now.
        snap.findings = findings::evaluate(&snap, interval_s, &self.findings);
        Some((snap, interval_s))
    }

    /// What tracking knows of each live socket now (for `tcptrace sockets`).
    pub fn known_sockets(&self) -> Vec<crate::sockets::Known> {
        crate::sockets::known(&self.tracker, Clock::monotonic_now_ns())
    }

    /// Seeds the tracker with sockets that predate tracing. Call once, right
    /// after start: their time in state is unknown, only "at least since now".
    pub fn seed(&mut self, census: &[NetnsCensus], seen_ns: u64) {
        if !self.cookies {
            log::info!("classic tracepoints key sockets by address: census seeding skipped");
            return;
        }
        for ns in census {
            for s in ns
                .sockets
                .iter()
                .filter(|s| !s.timewait && s.state != TcpState::NewSynRecv)
            {
                self.tracker
                    .seed(s.cookie, s.state, ns.inode, s.local, s.remote, seen_ns);
            }
        }
    }

    /// Applies a periodic census taken starting at `started_ns`: TIME_WAIT and
    /// orphaned FIN_WAIT2 counts, accept queues, and pruning of tracked sockets
    /// whose CLOSE was never seen.
    pub fn apply_census(&mut self, census: &[NetnsCensus], started_ns: u64) {
        let only = self.agg.config().netns;
        let view = census_view(census, &self.tracker, only);
        self.agg.set_census(view);
        if self.cookies {
            let alive: HashSet<u64> = census
                .iter()
                .flat_map(|ns| ns.sockets.iter().map(|s| s.cookie))
                .collect();
            let pruned = self.tracker.retain_census(&alive, started_ns);
            if pruned > 0 {
                log::debug!("pruned {pruned} tracked sockets the census no longer sees");
            }
        }
    }
}

/// The per-event path of the daemon, `watch` and a recording's replay:
/// keeps the record in the flight recorder if any, decodes it, tracks it and
/// aggregates it (the replay benchmark measures exactly this). Returns the
/// event's kernel timestamp, `None` for a record that did not decode.
#[inline]
pub fn ingest(
    record: &[u8],
    flight: Option<&mut crate::flight::FlightRecorder>,
    tracker: &mut Tracker,
    agg: &mut Aggregator,
) -> Option<u64> {
    if let Some(f) = flight {
        f.push(record);
    }
    match event::decode(record) {
        Ok(ev) => {
            let note = tracker.observe(&ev);
            if !note.repeat {
                agg.add(&ev, &note, tracker);
            }
            Some(ev.ts_ns)
        }
        Err(e) => {
            log::debug!("undecodable record: {e}");
            agg.add_undecodable(1);
            None
        }
    }
}

/// What sock_diag adds to the aggregates: timewait sockets per port and
/// state with their oldest age, and listener accept queues.
pub fn census_view(census: &[NetnsCensus], tracker: &Tracker, only: Option<u32>) -> CensusView {
    let mut view = CensusView::default();
    let ephemeral = ephemeral_ports();
    for ns in census
        .iter()
        .filter(|ns| only.is_none_or(|n| n == ns.inode))
    {
        for s in &ns.sockets {
            if s.timewait {
                let listens = tracker.is_listener(ns.inode, s.local.port());
                let (port, dir) =
                    attribute(Origin::Unknown, &s.local, &s.remote, listens, &ephemeral);
                let age = s.age_ms(ns.fin_timeout_ms).unwrap_or(0);
                let entry = view.timewait.entry((port, dir, s.state)).or_insert((0, 0));
                entry.0 += 1;
                entry.1 = entry.1.max(age);
            } else if s.state == TcpState::Listen {
                let q = view
                    .accept_queues
                    .entry(s.local.port())
                    .or_insert(AcceptQueue { len: 0, max: 0 });
                q.len += s.recv_q;
                q.max += s.send_q;
            }
        }
    }
    view
}

/// net.ipv4.ip_local_port_range of this namespace (Linux's default if unreadable).
pub fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some(it.next()?.ok()?..=it.next()?.ok()?)
        })
        .unwrap_or(crate::aggregate::DEFAULT_EPHEMERAL)
}

/// net.ipv4.tcp_synack_retries of this namespace (5 if unreadable).
pub fn synack_retries() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_synack_retries")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(5)
}
