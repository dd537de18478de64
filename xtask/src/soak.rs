//! `cargo xtask soak`: minutes of churn across many ports with the daemon
//! attached, sampling its memory and file descriptors, and a verdict on
//! whether its RSS levels off. Printed, not asserted: it exits non-zero
//! only when something broke (the daemon died, the churn made nothing).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::churn::{self, Mode, Progress};
use crate::netns::Netns;
use crate::tracer::{self, Daemon};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to churn.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Server ports the connections spread over.
    #[arg(long, default_value_t = 200)]
    pub ports: u16,
    /// How connections end (mixed: each port one of the four modes).
    #[arg(long, value_enum, default_value_t = Mode::Mixed)]
    pub mode: Mode,
    /// Client threads (as many server threads).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_seconds: f64,
    /// An extra flag for `tcptrace daemon` (repeatable).
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// The release binary is already built (set when re-run through sudo).
    #[arg(long, hide = true)]
    pub no_build: bool,
}

/// RSS may grow this much from the middle third's peak to the last third's
/// and still count as level: 5%, and at least 2 MiB.
const RSS_SLACK_FRACTION: f64 = 0.05;
const RSS_SLACK_KIB: u64 = 2048;

struct Sample {
    at_s: f64,
    rss_kib: u64,
    fds: usize,
}

pub fn run(args: &SoakArgs, bin: &Path, stop: &AtomicBool) -> Result<()> {
    if args.minutes <= 0.0 || args.sample_seconds <= 0.0 {
        bail!("--minutes and --sample-seconds must be positive");
    }
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let cfg = churn::Config {
        mode: args.mode,
        threads: args.threads,
        server_threads: args.threads,
        ports: args.ports,
        duration,
        ..churn::Config::default()
    };
    let ns = Netns::new("soak")?;
    let mut daemon = Daemon::start(bin, &args.daemon_args)?;
    println!(
        "tcptrace soak: {} min of {} churn over {} ports ({} client + {} server threads) in netns {}; daemon pid {} with defaults{}",
        args.minutes,
        cfg.mode.name(),
        cfg.ports,
        cfg.threads,
        cfg.server_threads,
        ns.inode,
        daemon.pid,
        if args.daemon_args.is_empty() {
            String::new()
        } else {
            format!(" + {}", args.daemon_args.join(" "))
        }
    );
    println!(
        "{:>7} {:>12} {:>9} {:>12} {:>8} {:>9} {:>9} {:>5}",
        "time s", "connections", "conn/s", "events", "lost", "RSS MiB", "HWM MiB", "fds"
    );
    let progress = Progress::default();
    let mut samples = Vec::new();
    let outcome = thread::scope(|scope| -> Result<churn::Outcome> {
        let churner = scope.spawn(|| churn::run(&ns, &cfg, &progress, stop));
        let broke = watch(
            &mut daemon,
            &progress,
            || churner.is_finished(),
            Duration::from_secs_f64(args.sample_seconds),
            &mut samples,
        );
        if broke.is_some() {
            stop.store(true, Ordering::Relaxed);
        }
        let out = churner
            .join()
            .map_err(|_| anyhow!("the churn thread panicked"))?;
        if let Some(e) = broke {
            return Err(e);
        }
        out
    })?;
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    let (events, lost, skipped) = daemon.scrape().map_or((f64::NAN, f64::NAN, f64::NAN), |m| {
        (
            m.get("tcptrace_events_total"),
            m.get("tcptrace_events_lost_total"),
            m.get("tcptrace_events_lost_skipped_total"),
        )
    });
    let misses = skipped_per_program(daemon.pid);
    let log = daemon.log_text();
    let (status, reports) = daemon.stop()?;
    if !status.success() {
        bail!("tcptrace daemon exited with {status}:\n{log}");
    }
    println!(
        "churn: {} connections, {:.0}/s, {} errors{}; daemon: {events:.0} events, {lost:.0} lost ({skipped:.0} of them skipped by the kernel, the rest ring buffer full), {} reports, {status}",
        outcome.connections,
        outcome.per_second(),
        outcome.errors,
        outcome
            .first_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" (first: {e})")),
        reports.len(),
    );
    println!("runs skipped by the kernel's recursion guard, per program: {misses}");
    if outcome.connections == 0 {
        bail!("the churn made no connection");
    }
    println!("{}", verdict(&samples));
    Ok(())
}

/// Samples the daemon every `every` until `done()`; an error if it died.
fn watch(
    daemon: &mut Daemon,
    progress: &Progress,
    done: impl Fn() -> bool,
    every: Duration,
    samples: &mut Vec<Sample>,
) -> Option<anyhow::Error> {
    let started = Instant::now();
    let mut next = started + every;
    let (mut last_conns, mut last_at) = (0, started);
    while !done() {
        thread::sleep(Duration::from_millis(100));
        if Instant::now() < next {
            continue;
        }
        next += every;
        if !daemon.alive() {
            return Some(anyhow!(
                "the daemon died during the soak:\n{}",
                daemon.log_text()
            ));
        }
        let now = Instant::now();
        let conns = progress.connections.load(Ordering::Relaxed);
        let rate = (conns - last_conns) as f64 / (now - last_at).as_secs_f64();
        (last_conns, last_at) = (conns, now);
        match sample(daemon, started) {
            Ok((s, events, lost, hwm)) => {
                println!(
                    "{:>7.0} {:>12} {:>9.0} {:>12.0} {:>8.0} {:>9.1} {:>9.1} {:>5}",
                    s.at_s,
                    conns,
                    rate,
                    events,
                    lost,
                    s.rss_kib as f64 / 1024.0,
                    hwm as f64 / 1024.0,
                    s.fds
                );
                samples.push(s);
            }
            Err(e) => eprintln!("xtask: sample failed: {e:#}"),
        }
    }
    None
}

fn sample(daemon: &Daemon, started: Instant) -> Result<(Sample, f64, f64, u64)> {
    let m = daemon.scrape().context("scrape /metrics")?;
    let s = Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib: daemon.status_kib("VmRSS")?,
        fds: daemon.fds()?,
    };
    let hwm = daemon.status_kib("VmHWM")?;
    Ok((
        s,
        m.get("tcptrace_events_total"),
        m.get("tcptrace_events_lost_total"),
        hwm,
    ))
}

/// Compares the last third of the samples with the middle third.
fn verdict(samples: &[Sample]) -> String {
    if samples.len() < 6 {
        return format!(
            "verdict: {} samples are too few to judge a plateau (run longer)",
            samples.len()
        );
    }
    let third = samples.len() / 3;
    let middle = &samples[third..2 * third];
    let last = &samples[samples.len() - third..];
    let max_rss = |s: &[Sample]| s.iter().map(|x| x.rss_kib).max().unwrap_or(0);
    let max_fds = |s: &[Sample]| s.iter().map(|x| x.fds).max().unwrap_or(0);
    let (mid, end) = (max_rss(middle), max_rss(last));
    let slack = crate::bench::count(mid as f64 * RSS_SLACK_FRACTION).max(RSS_SLACK_KIB);
    let rss_ok = end <= mid + slack;
    let (mid_fds, end_fds) = (max_fds(middle), max_fds(last));
    let fds_ok = end_fds <= mid_fds + 2;
    format!(
        "verdict: RSS {} (max {:.1} MiB in the middle third, {:.1} MiB in the last, allowed +{:.1} MiB); \
         fds {} (max {mid_fds} then {end_fds})",
        if rss_ok { "plateaued" } else { "STILL GROWING" },
        mid as f64 / 1024.0,
        end as f64 / 1024.0,
        slack as f64 / 1024.0,
        if fds_ok { "steady" } else { "GROWING" },
    )
}

/// Which of the daemon's programs the kernel skipped, and how often. Only
/// the state program has a catcher, so a skip of any other is a lost event.
fn skipped_per_program(pid: u32) -> String {
    let Ok(programs) = tracer::bpf_programs(pid) else {
        return "unknown (bpftool failed)".to_string();
    };
    let skipped: Vec<String> = programs
        .values()
        .filter(|s| s.recursion_misses > 0)
        .map(|s| format!("{} {}", s.name, s.recursion_misses))
        .collect();
    if skipped.is_empty() {
        "none".to_string()
    } else {
        skipped.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &r)| Sample {
                at_s: i as f64 * 10.0,
                rss_kib: r,
                fds: 20,
            })
            .collect()
    }

    #[test]
    fn plateau_and_growth() {
        let flat = series(&[
            10_000, 20_000, 30_000, 30_500, 30_200, 30_900, 31_000, 30_800, 31_100,
        ]);
        assert!(verdict(&flat).contains("plateaued"));
        let growing = series(&[
            10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000, 90_000,
        ]);
        assert!(verdict(&growing).contains("STILL GROWING"));
        assert!(verdict(&series(&[1, 2])).contains("too few"));
    }
}
