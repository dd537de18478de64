//! The traced side of the benchmarks: a real `tcptrace daemon` process and
//! what can be read about it from outside (its /metrics, /proc, bpftool).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// A running `tcptrace daemon`, stopped (and its report file removed) on drop.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    /// Its Prometheus endpoint.
    pub listen: SocketAddr,
    report: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `bin daemon` with JSON reports to a temporary file, /metrics on
    /// a free loopback port, and `extra` flags; returns once /healthz answers.
    pub fn start(bin: &Path, extra: &[String]) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let report = std::env::temp_dir().join(format!(
            "tcptrace-bench-{}-{}.jsonl",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&report);
        let listen = free_loopback_port()?;
        let mut child = Command::new(bin)
            .arg("daemon")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--output")
            .arg(&report)
            .args(["--format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut daemon = Self {
            pid: child.id(),
            child,
            listen,
            report,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "tcptrace daemon exited at start ({status}):\n{}",
                    daemon.log_text()
                );
            }
            if http_get(listen, "/healthz").is_ok_and(|b| b.starts_with("ok")) {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!(
                    "tcptrace daemon did not answer on {listen} within 30 s:\n{}",
                    daemon.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// /metrics, as sums over labels per metric name.
    pub fn scrape(&self) -> Result<Metrics> {
        let body = http_get(self.listen, "/metrics")?;
        Ok(Metrics::parse(&body))
    }

    /// CPU time of the whole process so far (all threads, dead ones too).
    pub fn cpu(&self) -> Result<Cpu> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .context("read the daemon's /proc/PID/stat")?;
        Cpu::parse(&stat)
    }

    /// A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), in KiB.
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("read the daemon's /proc/PID/status")?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("no {field} in /proc/{}/status", self.pid))
    }

    /// Open file descriptors.
    pub fn fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .context("list the daemon's fds")?
            .count())
    }

    /// Stops it with SIGTERM (its final report), and returns its exit status
    /// and every report line it wrote.
    pub fn stop(mut self) -> Result<(ExitStatus, Vec<Value>)> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid.cast_signed(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "tcptrace daemon did not stop within 20 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let text = std::fs::read_to_string(&self.report).unwrap_or_default();
        let reports = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .context("parse the daemon's JSON reports")?;
        Ok((status, reports))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.report);
    }
}

/// Events of the daemon's namespace (`--netns`) in its reports: every
/// transition, SYN-ACK retransmit, retransmit and reset attributed to a port.
/// (`events.total` counts every namespace; the per-port rows only `--netns`.)
pub fn netns_events(reports: &[Value]) -> u64 {
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let mut n = 0;
    for r in reports {
        for p in r["ports"].as_array().into_iter().flatten() {
            n += count(&p["transitions"]) + count(&p["synack_retrans"]) + count(&p["retransmits"]);
            n += p["resets_sent"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| count(&r["count"]))
                .sum::<u64>();
            n += p["resets_received"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, v)| count(v))
                .sum::<u64>();
        }
    }
    n
}

/// Lost events over all of the daemon's reports.
pub fn reported_lost(reports: &[Value]) -> u64 {
    reports
        .iter()
        .map(|r| r["events"]["lost"].as_u64().unwrap_or(0))
        .sum()
}

/// Metric name -> value summed over its label sets.
#[derive(Clone, Debug, Default)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.parse::<f64>() {
                *m.entry(name.to_string()).or_default() += v;
            }
        }
        Self(m)
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}

/// User and system CPU seconds of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
}

impl Cpu {
    fn parse(stat: &str) -> Result<Self> {
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> Result<f64> {
            let t: u64 = fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .context("malformed /proc/PID/stat")?;
            Ok(t as f64 / clock_ticks())
        };
        Ok(Self {
            user_s: tick(11)?,
            sys_s: tick(12)?,
        })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Run time and count of one BPF program (kernel.bpf_stats_enabled=1).
#[derive(Clone, Debug, Default)]
pub struct ProgStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Runs the kernel skipped because the program was already running on
    /// that CPU (a softirq interrupting it): events lost without a trace in
    /// the ring's lost counter.
    pub recursion_misses: u64,
}

fn bpftool_programs() -> Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("run bpftool prog show")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let progs: Value = serde_json::from_slice(&out.stdout).context("parse bpftool's JSON")?;
    Ok(progs.as_array().cloned().unwrap_or_default())
}

/// Ids of the BPF programs a process holds (program and link fds), from
/// /proc/PID/fdinfo: bpftool's own `pids` field needs a bpftool built with
/// BPF skeletons, which Debian's is not.
fn held_programs(pid: u32) -> BTreeSet<u64> {
    let mut ids = held_ids(pid, "bpf-prog", "prog_id:");
    ids.extend(held_ids(pid, "bpf_link", "prog_id:"));
    ids
}

/// The `field` ids in the fdinfo of `pid`'s fds whose link target contains
/// `kind` (bpf-prog, bpf_link, bpf-map).
fn held_ids(pid: u32, kind: &str, field: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return ids;
    };
    for fd in fds.filter_map(Result::ok) {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if !target.to_string_lossy().contains(kind) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix(field)?.trim().parse::<u64>().ok()),
        );
    }
    ids
}

/// The sum of the `u64` values of the BPF map named `name` that `pid` holds
/// (a per-CPU counter array such as tcptrace's `caught`), via bpftool.
pub fn map_sum(pid: u32, name: &str) -> Result<u64> {
    let ids = held_ids(pid, "bpf-map", "map_id:");
    for id in &ids {
        let show = Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string(), "--json"])
            .output()
            .context("run bpftool map show")?;
        let info: Value = serde_json::from_slice(&show.stdout).unwrap_or(Value::Null);
        if info["name"].as_str() != Some(name) {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["map", "dump", "id", &id.to_string(), "--json"])
            .output()
            .context("run bpftool map dump")?;
        let entries: Value =
            serde_json::from_slice(&out.stdout).context("parse bpftool's map dump")?;
        return Ok(entries
            .as_array()
            .into_iter()
            .flatten()
            // With BTF, bpftool adds the value as a number under "formatted".
            .filter_map(|e| e["formatted"]["value"].as_u64())
            .sum());
    }
    bail!("process {pid} holds no BPF map named {name}")
}

/// The BPF programs `pid` holds, by id, with their run statistics.
pub fn bpf_programs(pid: u32) -> Result<BTreeMap<u64, ProgStats>> {
    let ids = held_programs(pid);
    if ids.is_empty() {
        bail!("process {pid} holds no BPF program");
    }
    let mut found = BTreeMap::new();
    for p in bpftool_programs()? {
        let Some(id) = p["id"].as_u64().filter(|id| ids.contains(id)) else {
            continue;
        };
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        found.insert(
            id,
            ProgStats {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                run_time_ns: n("run_time_ns"),
                run_cnt: n("run_cnt"),
                recursion_misses: n("recursion_misses"),
            },
        );
    }
    Ok(found)
}

/// Processes other than `except` holding tracing BPF programs (tp_btf,
/// tracepoints, kprobes), as "comm[pid]": another tracer running meanwhile
/// (another tcptrace, a test suite) adds its cost to every figure.
pub fn foreign_tracers(except: Option<u32>) -> Vec<String> {
    let tracing: BTreeSet<u64> = bpftool_programs()
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            matches!(
                p["type"].as_str(),
                Some("tracing" | "tracepoint" | "raw_tracepoint" | "kprobe" | "perf_event")
            )
        })
        .filter_map(|p| p["id"].as_u64())
        .collect();
    if tracing.is_empty() {
        return Vec::new();
    }
    let mut who = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if Some(pid) == except || pid == std::process::id() {
            continue;
        }
        if held_programs(pid).iter().any(|id| tracing.contains(id)) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            who.push(format!("{}[{pid}]", comm.trim()));
        }
    }
    who
}

/// `after - before`, per program present in both.
pub fn bpf_delta(
    before: &BTreeMap<u64, ProgStats>,
    after: &BTreeMap<u64, ProgStats>,
) -> Vec<ProgStats> {
    after
        .iter()
        .filter_map(|(id, a)| {
            let b = before.get(id)?;
            Some(ProgStats {
                name: a.name.clone(),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
                recursion_misses: a.recursion_misses.saturating_sub(b.recursion_misses),
            })
        })
        .collect()
}

/// Sets kernel.bpf_stats_enabled and puts the previous value back on drop.
/// On, the kernel reads the clock twice around every program run to count
/// run_time_ns (a program that returns at once measures ~55 ns per run on
/// the development VM, most of it this), which the traced workload pays too.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn set(on: bool) -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("read {BPF_STATS}"))?
            .trim()
            .to_string();
        let value = if on { "1" } else { "0" };
        std::fs::write(BPF_STATS, value)
            .with_context(|| format!("write {value} to {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "xtask: could not restore kernel.bpf_stats_enabled={}: {e}",
                self.previous
            );
        }
    }
}

/// A loopback port nobody listens on now.
fn free_loopback_port() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    Ok(l.local_addr()?)
}

/// GET `path` over plain HTTP/1.1; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer from {addr}{path}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_over_labels() {
        let m = Metrics::parse(
            "# HELP x\n# TYPE tcptrace_events counter\ntcptrace_events_total{kind=\"state\"} 25\n\
             tcptrace_events_total{kind=\"recv_reset\"} 3\ntcptrace_events_lost_total 0\n",
        );
        assert!((m.get("tcptrace_events_total") - 28.0).abs() < f64::EPSILON);
        assert!(m.get("tcptrace_events_lost_total").abs() < f64::EPSILON);
    }

    #[test]
    fn proc_stat_times() {
        let stat = "42 (tcp trace) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0";
        let cpu = Cpu::parse(stat).unwrap();
        let t = clock_ticks();
        assert!((cpu.user_s - 250.0 / t).abs() < 1e-9);
        assert!((cpu.sys_s - 30.0 / t).abs() < 1e-9);
    }

    #[test]
    fn netns_events_add_every_per_port_count() {
        let r: Value = serde_json::from_str(
            r#"{"events":{"total":99,"lost":2},"ports":[
                {"transitions":10,"synack_retrans":1,"retransmits":0,
                 "resets_sent":[{"reason":"X","state_before":null,"count":2}],
                 "resets_received":{"ESTABLISHED":3}},
                {"transitions":5,"synack_retrans":0,"retransmits":1,
                 "resets_sent":[],"resets_received":{}}]}"#,
        )
        .unwrap();
        assert_eq!(netns_events(&[r.clone(), r.clone()]), 2 * 22);
        assert_eq!(reported_lost(&[r]), 2);
    }
}
