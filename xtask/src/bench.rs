//! `cargo xtask bench`: what tracing costs under connection churn.
//!
//! Runs the churn untraced and traced (a real `tcptrace daemon` with its
//! defaults: full aggregation, /metrics, reports to a file) alternately,
//! untraced first and last, and prints, per pair and as medians:
//! connections/s traced/untraced, events seen against the kernel's own
//! counters, events lost, the daemon's CPU per event, the BPF programs' run
//! time per event, and the daemon's peak RSS. Figures are printed next to
//! their targets, never asserted.
//!
//! The BPF programs' run time needs kernel.bpf_stats_enabled, which makes
//! every program run read the clock twice more: an instrument that would
//! weigh on the very ratio it sits beside. So each pair has a third run, the
//! daemon again with the stats on, for the in-kernel figures only; the pair's
//! ratio comes from the run without them, as a host in production runs, and
//! the stats run's own ratio is printed beside it.
//!
//! Each traced run is compared with the mean of the untraced runs just
//! before and after it (U T U S U T U S U ...: neighbours share theirs), so
//! that a host whose speed drifts during the benchmark, as a shared VM's
//! does, biases no ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::churn::{self, EVENTS_PER_LISTENER, Mode, Outcome, Progress};
use crate::netns::Netns;
use crate::tracer::{self, BpfStats, Daemon, ProgStats};

/// The performance budget (DESIGN.md): printed beside the figures.
const TARGET_RATIO: f64 = 0.90;
const TARGET_KERNEL_NS: f64 = 300.0;
const TARGET_USER_NS: f64 = 150.0;
const TARGET_REPLAY_EPS: f64 = 10e6;

#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools, reason = "command-line switches")]
pub struct BenchArgs {
    /// Untraced/traced pairs of runs.
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Seconds of churn per run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Client threads of the churn.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Server threads of the churn [default: as many as client threads].
    #[arg(long)]
    pub server_threads: Option<usize>,
    /// How connections end.
    #[arg(long, value_enum, default_value_t = Mode::ClientClose)]
    pub mode: Mode,
    /// Server ports (mixed mode needs at least 4).
    #[arg(long, default_value_t = 1)]
    pub ports: u16,
    /// One pair of 2 s runs and no replay benchmark: checks that the
    /// benchmark works (cargo xtask test runs it), measures little.
    #[arg(long)]
    pub quick: bool,
    /// Where the figures go as JSON.
    #[arg(long, default_value = "target/bench.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Skip the criterion replay benchmark (decode + tracking + aggregation).
    #[arg(long)]
    pub no_replay: bool,
    /// Skip each pair's third run, the one with kernel.bpf_stats_enabled
    /// that measures the BPF programs' run time (no in-kernel figures).
    #[arg(long)]
    pub no_bpf_stats: bool,
    /// An extra flag for `tcptrace daemon` (repeatable), e.g.
    /// --daemon-arg=--ring-size=16M.
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// The release binary is already built (set when re-run through sudo).
    #[arg(long, hide = true)]
    pub no_build: bool,
}

/// One traced run.
struct Traced {
    churn: Outcome,
    active_opens: u64,
    expected: u64,
    /// Events of the benchmark's namespace in the daemon's reports.
    seen: u64,
    /// Events the daemon read from the ring during the churn, all
    /// namespaces (its /metrics).
    read: u64,
    lost: u64,
    user_s: f64,
    sys_s: f64,
    /// The daemon's BPF programs over the churn (run times with bpf stats).
    programs: Vec<ProgStats>,
    /// Skipped state events the catcher program handled, over the churn.
    caught: u64,
    bpf_stats: bool,
    hwm_kib: u64,
    listen_overflows: u64,
    /// Resets sent beyond those of the mode (Tcp:OutRsts), counted in `expected`.
    extra_resets: u64,
    /// Other processes' tracing programs seen around the run.
    foreign: Vec<String>,
}

impl Traced {
    fn user_ns_per_event(&self) -> f64 {
        per_event_ns(self.user_s, self.read)
    }

    fn sys_ns_per_event(&self) -> f64 {
        per_event_ns(self.sys_s, self.read)
    }

    /// All programs' run time, the catcher's included, over the events they
    /// handled: one run of a hook's main program per event, plus the events
    /// the catcher handled in its stead.
    fn kernel_ns_per_event(&self) -> Option<f64> {
        let ns: u64 = self.programs.iter().map(|s| s.run_time_ns).sum();
        let events: u64 = self
            .programs
            .iter()
            .filter(|s| s.name != CATCHER)
            .map(|s| s.run_cnt)
            .sum::<u64>()
            + self.caught;
        (self.bpf_stats && events > 0).then(|| ns as f64 / events as f64)
    }

    /// Runs of the hooks' programs the kernel skipped (recursion on a CPU),
    /// which the catcher program handles if it can. Its own skipped runs
    /// are not counted: the main program handled those events.
    fn missed(&self) -> u64 {
        self.programs
            .iter()
            .filter(|s| s.name != CATCHER)
            .map(|s| s.recursion_misses)
            .sum()
    }
}

/// The program that handles the state events the kernel skipped the main
/// one for (tcptrace-ebpf/src/bpf/state.bpf.c).
const CATCHER: &str = "catch_inet_sock_set_state";

fn per_event_ns(seconds: f64, events: u64) -> f64 {
    if events == 0 {
        f64::NAN
    } else {
        seconds * 1e9 / events as f64
    }
}

/// A traced run and the untraced runs either side of it, and, unless
/// --no-bpf-stats, the bpf_stats run and the untraced run after that.
struct Pair {
    /// Before the traced run, between it and the stats run, after the
    /// stats run. Neighbouring pairs share their edge runs.
    untraced: Vec<Outcome>,
    /// bpf_stats off: the ratio, loss and userspace figures.
    traced: Traced,
    /// The same with bpf_stats on: the in-kernel figures.
    stats: Option<Traced>,
    /// Other processes' tracing programs seen during any of the runs.
    foreign: Vec<String>,
    /// 1-minute load average at the end of the pair (the churn's own
    /// threads count about 4): other work on the machine skews the ratio.
    load: f64,
    /// Share of the CPUs' time the hypervisor gave to others over the pair
    /// (/proc/stat steal): the host taking time skews the ratio too.
    steal: f64,
}

impl Pair {
    /// The untraced rate around the `k`th traced run (0 = bpf_stats off):
    /// the mean of the runs just before and just after it, which cancels a
    /// host that speeds up or slows down steadily (on the development VM
    /// the untraced rate moved by a third over a few minutes).
    fn baseline(&self, k: usize) -> f64 {
        around(&self.untraced, k)
    }

    fn ratio(&self) -> f64 {
        self.traced.churn.per_second() / self.baseline(0).max(1e-9)
    }

    /// The ratio of the run with bpf_stats on, for comparison.
    fn stats_ratio(&self) -> Option<f64> {
        let s = self.stats.as_ref()?;
        Some(s.churn.per_second() / self.baseline(1).max(1e-9))
    }

    fn kernel_ns_per_event(&self) -> Option<f64> {
        self.stats.as_ref()?.kernel_ns_per_event()
    }

    /// The traced runs of the pair: both have the daemon's defaults.
    fn runs(&self) -> impl Iterator<Item = &Traced> {
        std::iter::once(&self.traced).chain(&self.stats)
    }

    /// Lost by either traced run.
    fn lost(&self) -> u64 {
        self.runs().map(|t| t.lost).sum()
    }

    fn missed(&self) -> u64 {
        self.runs().map(Traced::missed).sum()
    }

    fn caught(&self) -> u64 {
        self.runs().map(|t| t.caught).sum()
    }
}

pub fn run(mut args: BenchArgs, bin: &Path, stop: &AtomicBool) -> Result<()> {
    if args.quick {
        args.pairs = 1;
        args.seconds = 2.0;
        args.no_replay = true;
    }
    if args.pairs == 0 || args.seconds <= 0.0 {
        bail!("--pairs and --seconds must be positive");
    }
    let cfg = churn::Config {
        mode: args.mode,
        threads: args.threads,
        server_threads: args.server_threads.unwrap_or(args.threads),
        ports: args.ports,
        duration: Duration::from_secs_f64(args.seconds),
        ..churn::Config::default()
    };
    println!(
        "tcptrace bench: churn mode {}, {} client + {} server threads, {} port(s), {} s per run, {} pairs, {} CPUs, kernel {}",
        cfg.mode.name(),
        cfg.threads,
        cfg.server_threads,
        cfg.ports,
        args.seconds,
        args.pairs,
        thread::available_parallelism().map_or(0, std::num::NonZero::get),
        kernel_release()
    );
    match cfg.mode.events_per_connection() {
        Some(n) => println!(
            "expected events = Tcp:ActiveOpens x {n} per connection + {EVENTS_PER_LISTENER} per listener \
             + resets sent beyond the mode's own (Tcp:OutRsts)"
        ),
        None => println!(
            "expected events = Tcp:ActiveOpens x (10 per client-close, server-close and payload, \
             8 per reset connection, weighted by the modes run) + {EVENTS_PER_LISTENER} per listener \
             + resets sent beyond the modes' own (Tcp:OutRsts)"
        ),
    }

    let mut pairs = Vec::new();
    let mut edge = untraced_run(&cfg, stop)?;
    for i in 0..args.pairs {
        let steal0 = CpuTimes::now()?;
        let traced = traced_run(&cfg, bin, &args, false, stop)?;
        let mid = untraced_run(&cfg, stop)?;
        let mut runs = vec![edge, mid];
        let stats = if args.no_bpf_stats {
            None
        } else {
            let s = traced_run(&cfg, bin, &args, true, stop)?;
            runs.push(untraced_run(&cfg, stop)?);
            Some(s)
        };
        let steal = CpuTimes::now()?.steal_since(&steal0);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
        let mut foreign: Vec<String> = runs.iter().flat_map(|u| u.foreign.clone()).collect();
        for t in std::iter::once(&traced).chain(&stats) {
            foreign.extend(t.foreign.iter().cloned());
        }
        foreign.sort();
        foreign.dedup();
        edge = runs.last().expect("two or three runs").clone();
        let pair = Pair {
            untraced: runs.into_iter().map(|u| u.churn).collect(),
            traced,
            stats,
            foreign,
            load: loadavg(),
            steal,
        };
        if i == 0 {
            println!("{LEGEND}");
            println!("{}", header());
        }
        println!("{}", row(&format!("{}", i + 1), &pair));
        check(&pair)?;
        pairs.push(pair);
    }
    let med = medians(&pairs);
    println!("{}", median_row(&med));
    print_programs(&pairs);
    println!("{}", targets(&med));

    let replay = if args.no_replay {
        None
    } else {
        Some(run_replay()?)
    };
    let doc = to_json(&args, &cfg, &pairs, &med, replay.as_ref());
    if let Some(dir) = args.json_out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", args.json_out.display()))?;
    println!("figures written to {}", args.json_out.display());
    Ok(())
}

/// Real breakage, as opposed to a missed target: nothing ran, or the
/// tracer saw nothing of what ran.
fn check(p: &Pair) -> Result<()> {
    let runs = p
        .untraced
        .iter()
        .map(|u| ("untraced", u))
        .chain(p.runs().map(|t| ("traced", &t.churn)));
    for (what, o) in runs {
        if o.connections == 0 {
            bail!(
                "the {what} churn made no connection (first error: {})",
                o.first_error.as_deref().unwrap_or("none")
            );
        }
    }
    if p.runs().any(|t| t.seen == 0 || t.read == 0) {
        bail!("the daemon saw no event of the benchmark's namespace");
    }
    Ok(())
}

/// Lets the kernel finish tearing down the previous run's namespace (its
/// TIME_WAIT sockets) before the next run starts.
const SETTLE: Duration = Duration::from_millis(500);

/// A run without the daemon.
#[derive(Clone)]
struct Untraced {
    churn: Outcome,
    /// Other processes' tracing programs seen around the run.
    foreign: Vec<String>,
}

fn untraced_run(cfg: &churn::Config, stop: &AtomicBool) -> Result<Untraced> {
    let ns = Netns::new("bench")?;
    let mut foreign = tracer::foreign_tracers(None);
    let out = churn::run(&ns, cfg, &Progress::default(), stop)?;
    foreign.extend(tracer::foreign_tracers(None));
    drop(ns);
    thread::sleep(SETTLE);
    Ok(Untraced {
        churn: out,
        foreign,
    })
}

fn traced_run(
    cfg: &churn::Config,
    bin: &Path,
    args: &BenchArgs,
    bpf_stats: bool,
    stop: &AtomicBool,
) -> Result<Traced> {
    let ns = Netns::new("bench")?;
    let mut extra = vec!["--netns".to_string(), ns.inode.to_string()];
    extra.extend(args.daemon_args.iter().cloned());
    let daemon = Daemon::start(bin, &extra)?;
    // Past start-up (BTF, census) and the first /metrics refresh.
    thread::sleep(Duration::from_millis(500));
    // Off too when not asked for: someone may have left it on.
    let stats = BpfStats::set(bpf_stats)?;
    let m0 = daemon.scrape()?;
    let cpu0 = daemon.cpu()?;
    let bpf0 = tracer::bpf_programs(daemon.pid)?;
    let caught0 = tracer::map_sum(daemon.pid, "caught")?;
    let c0 = ns.counters()?;
    let mut foreign = tracer::foreign_tracers(Some(daemon.pid));
    let out = churn::run(&ns, cfg, &Progress::default(), stop)?;
    let c1 = ns.counters()?;
    foreign.extend(tracer::foreign_tracers(Some(daemon.pid)));
    // /metrics refreshes every second: wait for one that saw the whole churn.
    thread::sleep(Duration::from_millis(1_200));
    let m1 = daemon.scrape()?;
    let cpu1 = daemon.cpu()?;
    let programs = tracer::bpf_delta(&bpf0, &tracer::bpf_programs(daemon.pid)?);
    drop(stats);
    let caught = tracer::map_sum(daemon.pid, "caught")?.saturating_sub(caught0);
    let hwm_kib = daemon.status_kib("VmHWM")?;
    let log = daemon.log_text();
    let (status, reports) = daemon.stop()?;
    if !status.success() {
        bail!("tcptrace daemon exited with {status}:\n{log}");
    }
    drop(ns);
    thread::sleep(SETTLE);

    let active_opens = c1.delta(&c0, "Tcp:ActiveOpens");
    // Resets beyond the mode's own (mostly TIME_WAIT overflow, see
    // `Mode::resets_per_connection`) are one event each.
    let extra_resets = c1
        .delta(&c0, "Tcp:OutRsts")
        .saturating_sub(count(active_opens as f64 * out.resets_per_connection()));
    let expected = count(active_opens as f64 * out.events_per_connection())
        + EVENTS_PER_LISTENER * u64::from(cfg.ports)
        + extra_resets;
    let delta = |name: &str| count(m1.get(name) - m0.get(name));
    Ok(Traced {
        active_opens,
        expected,
        seen: tracer::netns_events(&reports),
        read: delta("tcptrace_events_total"),
        lost: delta("tcptrace_events_lost_total").max(tracer::reported_lost(&reports)),
        user_s: cpu1.user_s - cpu0.user_s,
        sys_s: cpu1.sys_s - cpu0.sys_s,
        programs,
        caught,
        bpf_stats,
        hwm_kib,
        listen_overflows: c1.delta(&c0, "TcpExt:ListenOverflows"),
        extra_resets,
        foreign,
        churn: out,
    })
}

/// A non-negative float count (a metric, a weighted product) as an integer.
#[allow(clippy::cast_sign_loss, reason = "clamped to >= 0 first")]
pub fn count(x: f64) -> u64 {
    x.max(0.0).round() as u64
}

fn header() -> String {
    format!(
        "{:<7} {:>10} {:>10} {:>6} {:>7} {:>10} {:>10} {:>7} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8}",
        "pair",
        "untr c/s",
        "traced c/s",
        "ratio",
        "stats r",
        "expected",
        "seen",
        "seen%",
        "read",
        "lost",
        "missed",
        "caught",
        "user ns",
        "sys ns",
        "kernel ns",
        "HWM MiB"
    )
}

fn row(label: &str, p: &Pair) -> String {
    let t = &p.traced;
    format!(
        "{label:<7} {:>10.0} {:>10.0} {:>6.3} {:>7} {:>10} {:>10} {:>6.2}% {:>10} {:>6} {:>6} {:>6} {:>8.1} {:>8.1} {:>9} {:>8.1}",
        p.baseline(0),
        t.churn.per_second(),
        p.ratio(),
        or_dash(p.stats_ratio(), 3),
        t.expected,
        t.seen,
        100.0 * t.seen as f64 / t.expected.max(1) as f64,
        t.read,
        p.lost(),
        p.missed(),
        p.caught(),
        t.user_ns_per_event(),
        t.sys_ns_per_event(),
        or_dash(p.kernel_ns_per_event(), 0),
        t.hwm_kib as f64 / 1024.0,
    ) + &notes(p)
}

/// The mean rate of untraced runs `k` and `k + 1`: the runs either side of
/// the `k`th traced run of a pair.
fn around(untraced: &[Outcome], k: usize) -> f64 {
    f64::midpoint(untraced[k].per_second(), untraced[k + 1].per_second())
}

/// A figure that only the bpf_stats run has.
fn or_dash(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

/// The CPUs' time in /proc/stat, all of it and the part stolen.
struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    fn now() -> Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").context("read /proc/stat")?)
    }

    fn parse(stat: &str) -> Result<Self> {
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice;
        // guest time is counted in user time already.
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|t| t.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if ticks.len() < 8 {
            bail!("/proc/stat: no cpu line with a steal column");
        }
        Ok(Self {
            total: ticks[..8].iter().sum(),
            steal: ticks[7],
        })
    }

    fn steal_since(&self, before: &Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        self.steal.saturating_sub(before.steal) as f64 / total.max(1) as f64
    }
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn notes(p: &Pair) -> String {
    let t = &p.traced;
    let mut s = format!(
        "  daemon {:.0}% of a CPU, load {:.1}, steal {:.1}%, untraced runs {}",
        100.0 * (t.user_s + t.sys_s) / t.churn.elapsed.as_secs_f64().max(1e-9),
        p.load,
        100.0 * p.steal,
        p.untraced
            .iter()
            .map(|u| format!("{:.0}", u.per_second()))
            .collect::<Vec<_>>()
            .join("/"),
    );
    let errors = p.untraced.iter().map(|u| u.errors).sum::<u64>() + t.churn.errors;
    if errors > 0 {
        let first = t
            .churn
            .first_error
            .as_ref()
            .or_else(|| p.untraced.iter().find_map(|u| u.first_error.as_ref()));
        let _ = write!(
            s,
            "  ({errors} connect errors: {})",
            first.map_or("", String::as_str)
        );
    }
    if t.extra_resets > 0 {
        let _ = write!(s, "  ({} extra resets)", t.extra_resets);
    }
    if t.listen_overflows > 0 {
        let _ = write!(s, "  ({} listen overflows)", t.listen_overflows);
    }
    if !p.foreign.is_empty() {
        let _ = write!(
            s,
            "  (other tracers attached meanwhile: {})",
            p.foreign.join(" ")
        );
    }
    s
}

/// Medians over the pairs.
struct Medians {
    untraced: f64,
    traced: f64,
    ratio: f64,
    stats_ratio: Option<f64>,
    expected: f64,
    seen: f64,
    seen_pct: f64,
    read: f64,
    lost: f64,
    /// Over every traced run, not a median: the target is none at all.
    lost_total: u64,
    missed: f64,
    caught: f64,
    user_ns: f64,
    sys_ns: f64,
    kernel_ns: Option<f64>,
    hwm_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

fn medians(pairs: &[Pair]) -> Medians {
    let m = |f: &dyn Fn(&Pair) -> f64| median(pairs.iter().map(f).collect());
    let some = |f: &dyn Fn(&Pair) -> Option<f64>| {
        let v: Vec<f64> = pairs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Medians {
        untraced: m(&|p| p.baseline(0)),
        traced: m(&|p| p.traced.churn.per_second()),
        ratio: m(&Pair::ratio),
        stats_ratio: some(&Pair::stats_ratio),
        expected: m(&|p| p.traced.expected as f64),
        seen: m(&|p| p.traced.seen as f64),
        seen_pct: m(&|p| 100.0 * p.traced.seen as f64 / p.traced.expected.max(1) as f64),
        read: m(&|p| p.traced.read as f64),
        lost: m(&|p| p.lost() as f64),
        lost_total: pairs.iter().map(Pair::lost).sum(),
        missed: m(&|p| p.missed() as f64),
        caught: m(&|p| p.caught() as f64),
        user_ns: m(&|p| p.traced.user_ns_per_event()),
        sys_ns: m(&|p| p.traced.sys_ns_per_event()),
        kernel_ns: some(&Pair::kernel_ns_per_event),
        hwm_mib: m(&|p| p.traced.hwm_kib as f64 / 1024.0),
    }
}

fn median_row(m: &Medians) -> String {
    format!(
        "{:<7} {:>10.0} {:>10.0} {:>6.3} {:>7} {:>10.0} {:>10.0} {:>6.2}% {:>10.0} {:>6.0} {:>6.0} {:>6.0} {:>8.1} {:>8.1} {:>9} {:>8.1}",
        "median",
        m.untraced,
        m.traced,
        m.ratio,
        or_dash(m.stats_ratio, 3),
        m.expected,
        m.seen,
        m.seen_pct,
        m.read,
        m.lost,
        m.missed,
        m.caught,
        m.user_ns,
        m.sys_ns,
        or_dash(m.kernel_ns, 0),
        m.hwm_mib,
    )
}

/// Per program, over every traced run: runs and ns per run.
fn program_totals(pairs: &[Pair]) -> Vec<ProgStats> {
    let mut by_name: Vec<ProgStats> = Vec::new();
    for p in pairs.iter().flat_map(Pair::runs).flat_map(|t| &t.programs) {
        match by_name.iter_mut().find(|s| s.name == p.name) {
            Some(s) => {
                s.run_cnt += p.run_cnt;
                s.run_time_ns += p.run_time_ns;
                s.recursion_misses += p.recursion_misses;
            }
            None => by_name.push(p.clone()),
        }
    }
    by_name.retain(|s| s.run_cnt > 0 || s.recursion_misses > 0);
    by_name
}

fn print_programs(pairs: &[Pair]) {
    let progs = program_totals(pairs);
    if progs.is_empty() {
        return;
    }
    let runs: u64 = progs.iter().map(|s| s.run_cnt).sum();
    let line: Vec<String> = progs
        .iter()
        .map(|s| {
            format!(
                "{} {:.0} ns x {} runs ({:.1}%), {} missed",
                s.name,
                s.run_time_ns as f64 / s.run_cnt.max(1) as f64,
                s.run_cnt,
                100.0 * s.run_cnt as f64 / runs.max(1) as f64,
                s.recursion_misses
            )
        })
        .collect();
    println!(
        "BPF programs (run time: the bpf_stats runs; missed: all traced runs): {}",
        line.join("; ")
    );
}

fn targets(m: &Medians) -> String {
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut out = String::from("targets (medians):\n");
    let _ = writeln!(
        out,
        "  traced/untraced conn/s  {:>8.3}             target >= {TARGET_RATIO:.2}  {}{}",
        m.ratio,
        mark(m.ratio >= TARGET_RATIO),
        m.stats_ratio
            .map_or_else(String::new, |r| format!("  (with bpf_stats on: {r:.3})")),
    );
    let _ = writeln!(
        out,
        "  events lost, all runs   {:>8}             target 0  {}  ({:.0} runs skipped by the kernel's recursion guard; {:.0} events caught, repeats included; medians per pair)",
        m.lost_total,
        mark(m.lost_total == 0),
        m.missed,
        m.caught,
    );
    match m.kernel_ns {
        Some(k) => {
            let _ = writeln!(
                out,
                "  in-kernel               {k:>8.0} ns/event    target <= {TARGET_KERNEL_NS:.0}  {}",
                mark(k <= TARGET_KERNEL_NS)
            );
        }
        None => out.push_str("  in-kernel               not measured (--no-bpf-stats)\n"),
    }
    let _ = writeln!(
        out,
        "  userspace CPU           {:>8.1} ns/event    target <= {TARGET_USER_NS:.0}  {}  ({:.3} CPU s per million events; +{:.1} ns system time)",
        m.user_ns,
        mark(m.user_ns <= TARGET_USER_NS),
        m.user_ns / 1000.0,
        m.sys_ns,
    );
    let _ = write!(
        out,
        "  events seen             {:>8.2}% of expected",
        m.seen_pct
    );
    out
}

const LEGEND: &str = "columns: untr/traced c/s = connections/s without (the mean of the untraced runs either \
side) and with the daemon (bpf_stats off); \
stats r = the ratio of the pair's third run, the daemon with bpf_stats on, which gives the kernel ns column; expected = from the \
namespace's kernel counters (a reset beyond the mode's own that hits a full socket adds a recv_reset the \
counters cannot show, so seen may exceed expected by up to the extra resets); seen = the namespace's events \
in the daemon's reports (--netns); read = events the daemon read during the churn (its /metrics; --netns \
filters in the kernel, so this namespace's only); lost = events lost as the daemon reports them, both traced runs (ring \
buffer full + missed and not caught); missed = runs of the hooks' programs the kernel skipped (recursion_misses); caught = \
those the catcher program handled instead; user/sys ns = daemon CPU per event read; kernel ns = all programs' \
run_time_ns (the catcher's included) per event handled; HWM = daemon peak RSS";

/// Columns: "seen" = events of the benchmark's namespace in the daemon's
/// reports; "read" = events read during the churn, all namespaces.
fn to_json(
    args: &BenchArgs,
    cfg: &churn::Config,
    pairs: &[Pair],
    m: &Medians,
    replay: Option<&Value>,
) -> Value {
    let num = nan_null;
    let pair_json: Vec<Value> = pairs
        .iter()
        .map(|p| {
            let mut v = traced_json(&p.traced);
            v["untraced_conn_per_s"] = json!(p.baseline(0));
            v["untraced_runs_conn_per_s"] = json!(
                p.untraced
                    .iter()
                    .map(Outcome::per_second)
                    .collect::<Vec<_>>()
            );
            v["steal_pct"] = num(100.0 * p.steal);
            v["ratio"] = json!(p.ratio());
            v["connect_errors"] =
                json!(p.untraced.iter().map(|u| u.errors).sum::<u64>() + p.traced.churn.errors);
            v["other_tracers"] = json!(p.foreign);
            v["loadavg_1m"] = num(p.load);
            v["bpf_stats_run"] = p.stats.as_ref().map_or(Value::Null, |s| {
                let mut v = traced_json(s);
                v["untraced_conn_per_s"] = json!(p.baseline(1));
                v["ratio"] = num(p.stats_ratio().unwrap_or(f64::NAN));
                v
            });
            v
        })
        .collect();
    json!({
        "config": {
            "mode": cfg.mode.name(),
            "client_threads": cfg.threads,
            "server_threads": cfg.server_threads,
            "ports": cfg.ports,
            "seconds": args.seconds,
            "pairs": args.pairs,
            "quick": args.quick,
            "daemon_args": args.daemon_args,
            "kernel": kernel_release(),
            "cpus": thread::available_parallelism().map_or(0, std::num::NonZero::get),
        },
        "targets": {
            "ratio_min": TARGET_RATIO,
            "lost": 0,
            "kernel_ns_per_event_max": TARGET_KERNEL_NS,
            "user_ns_per_event_max": TARGET_USER_NS,
            "replay_events_per_s_min": TARGET_REPLAY_EPS,
        },
        "pairs": pair_json,
        "median": {
            "untraced_conn_per_s": num(m.untraced),
            "traced_conn_per_s": num(m.traced),
            "ratio": num(m.ratio),
            "ratio_bpf_stats": m.stats_ratio,
            "events_expected": num(m.expected),
            "events_seen_netns": num(m.seen),
            "events_seen_pct": num(m.seen_pct),
            "events_read_all_netns": num(m.read),
            "events_lost": num(m.lost),
            "events_lost_total": m.lost_total,
            "recursion_misses": num(m.missed),
            "caught": num(m.caught),
            "user_ns_per_event": num(m.user_ns),
            "sys_ns_per_event": num(m.sys_ns),
            "kernel_ns_per_event": m.kernel_ns,
            "vm_hwm_mib": num(m.hwm_mib),
        },
        "programs": program_totals(pairs).iter().map(prog_json).collect::<Vec<_>>(),
        "replay": replay,
    })
}

/// One traced run's own figures.
fn traced_json(t: &Traced) -> Value {
    json!({
        "traced_conn_per_s": t.churn.per_second(),
        "traced_connections": t.churn.connections,
        "traced_connect_errors": t.churn.errors,
        "active_opens": t.active_opens,
        "events_expected": t.expected,
        "events_seen_netns": t.seen,
        "events_read_all_netns": t.read,
        "events_lost": t.lost,
        "user_cpu_s": t.user_s,
        "sys_cpu_s": t.sys_s,
        "user_ns_per_event": nan_null(t.user_ns_per_event()),
        "sys_ns_per_event": nan_null(t.sys_ns_per_event()),
        "kernel_ns_per_event": t.kernel_ns_per_event(),
        "vm_hwm_kib": t.hwm_kib,
        "listen_overflows": t.listen_overflows,
        "extra_resets": t.extra_resets,
        "programs": t.programs.iter().map(prog_json).collect::<Vec<_>>(),
        "recursion_misses": t.missed(),
        "caught": t.caught,
    })
}

fn nan_null(x: f64) -> Value {
    if x.is_nan() { Value::Null } else { json!(x) }
}

fn prog_json(s: &ProgStats) -> Value {
    json!({
        "name": s.name,
        "run_cnt": s.run_cnt,
        "run_time_ns": s.run_time_ns,
        "recursion_misses": s.recursion_misses,
        "ns_per_run": if s.run_cnt > 0 { json!(s.run_time_ns as f64 / s.run_cnt as f64) } else { Value::Null },
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the criterion replay benchmark and returns events/s per benchmark,
/// read from criterion's own files.
fn run_replay() -> Result<Value> {
    println!("replay benchmark: cargo bench -p tcptrace --bench replay");
    crate::cargo(&["bench", "--package", "tcptrace", "--bench", "replay"])?;
    let root = crate::workspace().join("target/criterion");
    let mut results = serde_json::Map::new();
    let mut lines = Vec::new();
    for group in read_dirs(&root) {
        for bench in read_dirs(&group) {
            let Some(eps) = criterion_throughput(&bench) else {
                continue;
            };
            let name = format!(
                "{}/{}",
                group.file_name().unwrap_or_default().to_string_lossy(),
                bench.file_name().unwrap_or_default().to_string_lossy()
            );
            lines.push(format!("{name}: {:.2} M events/s", eps / 1e6));
            results.insert(name, json!(eps));
        }
    }
    for l in &lines {
        println!("replay {l}");
    }
    if let Some(full) = results
        .iter()
        .find(|(k, _)| k.ends_with("decode_track_aggregate"))
        .and_then(|(_, v)| v.as_f64())
    {
        println!(
            "replay target: >= {:.0} M events/s on one core: {}",
            TARGET_REPLAY_EPS / 1e6,
            if full >= TARGET_REPLAY_EPS {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    Ok(Value::Object(results))
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Elements per second of one criterion benchmark: its throughput
/// (benchmark.json) over the mean time per iteration (estimates.json).
fn criterion_throughput(bench: &Path) -> Option<f64> {
    let read = |f: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(bench.join("new").join(f)).ok()?).ok()
    };
    let elements = read("benchmark.json")?["throughput"]["Elements"].as_f64()?;
    let mean_ns = read("estimates.json")?["mean"]["point_estimate"].as_f64()?;
    (mean_ns > 0.0).then(|| elements / (mean_ns / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(connections: u64) -> Outcome {
        Outcome {
            connections,
            errors: 0,
            first_error: None,
            server_errors: 0,
            by_mode: [connections, 0, 0, 0],
            elapsed: Duration::from_secs(5),
        }
    }

    #[test]
    fn each_traced_run_is_measured_against_the_untraced_runs_either_side() {
        // 40k, 50k and 45k connections/s: the traced run between the first
        // two is compared with 45k, the stats run after it with 47.5k.
        let untraced = [run(200_000), run(250_000), run(225_000)];
        assert!((around(&untraced, 0) - 45_000.0).abs() < 1e-9);
        assert!((around(&untraced, 1) - 47_500.0).abs() < 1e-9);
    }

    #[test]
    fn steal_is_the_stolen_share_of_all_cpu_time() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let before = CpuTimes::parse("cpu  100 0 50 800 0 0 30 20 7 0\ncpu0 1 2 3\n").unwrap();
        let after = CpuTimes::parse("cpu  400 0 150 1200 0 0 130 120 9 0\n").unwrap();
        assert_eq!((before.total, before.steal), (1_000, 20));
        // 1,000 ticks passed (guest time is inside user time), 100 stolen.
        assert!((after.steal_since(&before) - 0.1).abs() < 1e-12);
        assert!(CpuTimes::parse("cpu  1 2 3\n").is_err(), "no steal column");
        assert!(CpuTimes::parse("intr 5\n").is_err(), "no cpu line");
    }
}
