//! Loads tcptrace's BPF object into the kernel and attaches its programs.
//!
//! Only this module and [`crate::reader`] touch the kernel. Each hook is
//! attached as a BTF-typed tracepoint (`tp_btf`: socket cookies, cheapest) or,
//! on kernels without it or when asked, as a classic tracepoint. A hook the
//! kernel lacks costs the feature it feeds, with a warning, not the run.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::Map;
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use tcptrace_ebpf::names;

use crate::mapping::{ArrayMapping, page_size};
use crate::reader::Sources;
use crate::ringbuf::Ring;
use crate::stage::Stages;

/// Which kind of tracepoint programs to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookMode {
    /// BTF tracepoints, falling back to classic ones hook by hook.
    #[default]
    Auto,
    /// BTF-typed tracepoints (`tp_btf`) only.
    Btf,
    /// Classic tracepoints only (sockets keyed by address).
    Classic,
}

/// One kernel hook and what is lost without it.
struct Hook {
    category: &'static str,
    name: &'static str,
    btf_program: &'static str,
    classic_program: &'static str,
    feature: &'static str,
}

const HOOKS: [Hook; 5] = [
    Hook {
        category: "sock",
        name: "inet_sock_set_state",
        btf_program: "handle_inet_sock_set_state",
        classic_program: "classic_inet_sock_set_state",
        feature: "state transitions and dwell times",
    },
    Hook {
        category: "tcp",
        name: "tcp_retransmit_synack",
        btf_program: "handle_tcp_retransmit_synack",
        classic_program: "classic_tcp_retransmit_synack",
        feature: "SYN-ACK retransmits",
    },
    Hook {
        category: "tcp",
        name: "tcp_retransmit_skb",
        btf_program: "handle_tcp_retransmit_skb",
        classic_program: "classic_tcp_retransmit_skb",
        feature: "segment retransmits",
    },
    Hook {
        category: "tcp",
        name: "tcp_send_reset",
        btf_program: "handle_tcp_send_reset",
        classic_program: "classic_tcp_send_reset",
        feature: "resets sent",
    },
    Hook {
        category: "tcp",
        name: "tcp_receive_reset",
        btf_program: "handle_tcp_receive_reset",
        classic_program: "classic_tcp_receive_reset",
        feature: "resets received",
    },
];

/// Settings fixed at load time.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Unread bytes that make a submit wake the reader before its timer does.
    pub wakeup_bytes: u64,
    pub hooks: HookMode,
    /// Ring buffers, 1..=[`MAX_RINGS`]; CPU c writes to ring c % rings.
    pub rings: u32,
    /// Only this network namespace, filtered in the kernel.
    pub netns: Option<u32>,
    /// Only sockets with one of these ports on either side, filtered in the
    /// kernel when there are at most [`MAX_KERNEL_PORTS`].
    pub ports: Vec<u16>,
}

/// Ports the kernel-side filter holds (TCPTRACE_MAX_FILTER_PORTS).
pub const MAX_KERNEL_PORTS: usize = 16;

/// Rings the BPF object provides (TCPTRACE_MAX_RINGS in common.bpf.h).
pub const MAX_RINGS: u32 = names::RING_MAPS.len() as u32;

/// One ring per CPU, up to [`MAX_RINGS`]. CPUs sharing one ring contend for
/// its reserve lock (kernel/bpf/ringbuf.c: __bpf_ringbuf_reserve takes a
/// spinlock with interrupts off): on the 2-CPU benchmark host, two rings
/// brought the state program from ~340-410 to ~315-325 ns per event and
/// halved the runs skipped by recursion, which longer runs make likelier.
pub fn default_rings() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    u32::try_from(cpus).unwrap_or(MAX_RINGS).clamp(1, MAX_RINGS)
}

/// The CPUs' rings in use, the nested ring and the stages, mapped.
fn take_sources(ebpf: &mut Ebpf, rings: u32) -> Result<Sources> {
    let mut ring_bufs = Vec::new();
    for name in names::RING_MAPS[..rings as usize]
        .iter()
        .chain([&names::NESTED_RING])
    {
        let map = ebpf.take_map(name).with_context(|| format!("map {name}"))?;
        ring_bufs.push(Ring::new(map).with_context(|| format!("map ring buffer {name}"))?);
    }
    let nested = ring_bufs.pop().context("the nested ring")?;
    let stages = Stages::new(ebpf.take_map(names::STAGE_MAP).context("stage map")?)
        .context("map the per-CPU stages")?;
    Ok(Sources {
        rings: ring_bufs,
        nested,
        stages,
    })
}

/// The nested ring (records of a program that interrupted another one on
/// its CPU, one in a few thousand under churn): an eighth of a CPU's ring,
/// at least a page.
fn nested_ring_bytes(ring_bytes: u32) -> u32 {
    (ring_bytes / 8).max(page_size() as u32)
}

impl Default for TracerConfig {
    fn default() -> Self {
        // 4 MiB held a 10 ms poll interval of loopback churn with no loss where
        // 1 MiB lost events (DESIGN.md, "Performance budget").
        Self {
            ring_bytes: 4 << 20,
            wakeup_bytes: 1 << 20,
            hooks: HookMode::Auto,
            rings: default_rings(),
            netns: None,
            ports: Vec::new(),
        }
    }
}

/// How a hook ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    Btf,
    Classic,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attachment::Btf => "tp_btf",
            Attachment::Classic => "tracepoint",
        })
    }
}

/// The loaded programs. Dropping it detaches everything.
pub struct Tracer {
    /// Owns the programs and their links; kept alive for the tracer's lifetime.
    _ebpf: Ebpf,
    sources: Option<Sources>,
    lost: CpuCounters,
    /// Skipped state events the catcher program handled after all.
    caught: CpuCounters,
    /// /proc/self/fdinfo of our programs, which counts the runs the kernel
    /// skipped; kept open, so that a read is one pread, not a path lookup.
    fdinfo: Vec<std::fs::File>,
    /// The last sum of those counts and of catches, and when they were read.
    missed: std::cell::Cell<((u64, u64), Option<std::time::Instant>)>,
    /// (tracepoint, how it was attached) for every hook that is live.
    pub attached: Vec<(&'static str, Attachment)>,
    /// One line per feature lost to a missing hook.
    pub warnings: Vec<String>,
}

impl Tracer {
    /// Checks privileges and BTF, loads the object and attaches every hook.
    pub fn load(config: &TracerConfig) -> Result<Self> {
        check_privileges()?;
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            bail!(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): tcptrace needs \
                 Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y"
            );
        }
        raise_memlock();
        let btf = Btf::from_sys_fs().context("read the kernel's BTF")?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("count possible CPUs")?;
        let rings = config.rings.clamp(1, MAX_RINGS);
        let filter_netns = config.netns.unwrap_or(0);
        let mut filter_ports = [0u16; MAX_KERNEL_PORTS];
        // More ports than the kernel filter holds: filter in userspace only.
        let filter_nports = if config.ports.len() <= MAX_KERNEL_PORTS {
            filter_ports[..config.ports.len()].copy_from_slice(&config.ports);
            config.ports.len() as u32
        } else {
            log::info!("{} ports: filtering in userspace only", config.ports.len());
            0
        };
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .map_max_entries(names::LOST_MAP, cpus as u32)
            .map_max_entries(names::CAUGHT_MAP, cpus as u32)
            .map_max_entries(names::STAGE_MAP, cpus as u32)
            .map_max_entries(names::NESTED_RING, nested_ring_bytes(config.ring_bytes))
            .override_global(names::WAKEUP_BYTES, &config.wakeup_bytes, true)
            .override_global(names::NR_RINGS, &rings, true)
            .override_global(names::FILTER_NETNS, &filter_netns, true)
            .override_global(names::FILTER_NPORTS, &filter_nports, true)
            .override_global(names::FILTER_PORTS, &filter_ports, true);
        for (i, name) in names::RING_MAPS.iter().enumerate() {
            // Unused rings shrink to one page: the smallest ring the kernel makes.
            let size = if (i as u32) < rings {
                config.ring_bytes
            } else {
                page_size() as u32
            };
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(tcptrace_ebpf::OBJECT)
            .context("load the BPF object")?;

        let mut attached = Vec::new();
        let mut warnings = Vec::new();
        for hook in &HOOKS {
            match attach(&mut ebpf, &btf, hook, config.hooks) {
                Ok(how) => attached.push((hook.name, how)),
                Err(e) if hook.name == "inet_sock_set_state" => {
                    return Err(
                        e.context("attach sock:inet_sock_set_state, which every view needs")
                    );
                }
                Err(e) => warnings.push(format!(
                    "no {} on this kernel ({}:{}: {e:#})",
                    hook.feature, hook.category, hook.name
                )),
            }
        }

        if attached.first() == Some(&("inet_sock_set_state", Attachment::Btf)) {
            warnings.extend(attach_catcher(&mut ebpf, &btf));
        }
        let fdinfo = attached
            .iter()
            .filter_map(|(name, how)| {
                let hook = HOOKS.iter().find(|h| h.name == *name)?;
                let prog = match how {
                    Attachment::Btf => hook.btf_program,
                    Attachment::Classic => hook.classic_program,
                };
                let fd = ebpf.program(prog)?.fd().ok()?.as_fd().as_raw_fd();
                Some(
                    std::fs::File::open(format!("/proc/self/fdinfo/{fd}"))
                        .with_context(|| format!("open /proc/self/fdinfo/{fd}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let sources = take_sources(&mut ebpf, rings)?;
        let lost = CpuCounters::map(ebpf.take_map(names::LOST_MAP).context("lost map")?)
            .context("map the lost-event counter")?;
        let caught = CpuCounters::map(ebpf.take_map(names::CAUGHT_MAP).context("caught map")?)
            .context("map the caught-event counter")?;
        Ok(Self {
            _ebpf: ebpf,
            sources: Some(sources),
            fdinfo,
            missed: std::cell::Cell::new(((0, 0), None)),
            lost,
            caught,
            attached,
            warnings,
        })
    }

    /// "tp_btf/inet_sock_set_state, ..." for messages.
    pub fn describe(&self) -> String {
        let hooks: Vec<String> = self
            .attached
            .iter()
            .map(|(n, how)| format!("{how}/{n}"))
            .collect();
        hooks.join(", ")
    }

    /// Hands the ring buffers and the stages to a reader (once).
    pub fn take_sources(&mut self) -> Result<Sources> {
        self.sources
            .take()
            .context("the ring buffers were handed to a reader already")
    }

    /// Events lost, by cause: records the ring could not take (summed over
    /// CPUs), and program runs the kernel skipped because the same program was
    /// already running on that CPU (a softirq interrupting a process-context
    /// run; kernel/trace/bpf_trace.c: __bpf_trace_run counts them as
    /// recursion misses) that the catcher program did not handle instead.
    /// `repeats` are the catcher's records the tracker dropped
    /// ([`crate::track::Tracker::repeats`]). All are read without a syscall
    /// on bpf(2): the counters are mapped, the misses come from
    /// /proc/self/fdinfo, so this keeps working after `--user` dropped every
    /// capability.
    ///
    /// Unless `fresh` (for final figures), the skipped runs and catches are
    /// re-read at most every [`MISSES_REFRESH`]: this is called on every
    /// drain, and five fdinfo reads each 10 ms are a cost of their own.
    pub fn lost_events(&self, repeats: u64, fresh: bool) -> Result<Lost> {
        let (skipped, at) = self.missed.get();
        let skipped = match at {
            Some(at) if !fresh && at.elapsed() < MISSES_REFRESH => skipped,
            _ => {
                // Catches first: the kernel counts a miss before the catcher
                // runs, so misses read afterwards include every miss behind
                // these catches.
                let caught = self.caught.sum();
                let skipped = (self.missed_runs()?, caught);
                self.missed.set((skipped, Some(std::time::Instant::now())));
                skipped
            }
        };
        Ok(Lost {
            ring_full: self.lost.sum(),
            skipped: uncaught(skipped, repeats),
        })
    }

    /// Program runs the kernel skipped (recursion misses; the field exists
    /// since 5.12, before which such runs were not skipped silently either).
    fn missed_runs(&self) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut sum = 0;
        let mut buf = [0u8; 1024];
        for file in &self.fdinfo {
            let n = file
                .read_at(&mut buf, 0)
                .context("read /proc/self/fdinfo for skipped program runs")?;
            let info = String::from_utf8_lossy(&buf[..n]);
            sum += fdinfo_field(&info, "recursion_misses").unwrap_or(0);
        }
        Ok(sum)
    }
}

/// Events lost, by cause (cumulative since load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Records the ring could not take: raising `--ring-size` helps.
    pub ring_full: u64,
    /// Program runs the kernel skipped (its recursion guard) that the
    /// catcher did not handle either: a softirq interrupting the catcher
    /// itself. No setting helps; under heavy churn, a few per million.
    pub skipped: u64,
}

impl Lost {
    pub fn total(self) -> u64 {
        self.ring_full + self.skipped
    }

    /// What was lost since `before`, by cause, for a warning line: e.g.
    /// `5 ring buffer full (raise --ring-size), 2 skipped by the kernel's
    /// recursion guard, nothing to tune`.
    pub fn describe_since(self, before: Lost) -> String {
        let full = self.ring_full.saturating_sub(before.ring_full);
        let skipped = self.skipped.saturating_sub(before.skipped);
        let mut parts = Vec::new();
        if full > 0 {
            parts.push(format!("{full} ring buffer full (raise --ring-size)"));
        }
        if skipped > 0 {
            parts.push(format!(
                "{skipped} skipped by the kernel's recursion guard, nothing to tune"
            ));
        }
        parts.join(", ")
    }
}

/// How stale [`Tracer::lost_events`] may let the skipped-run count get.
const MISSES_REFRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// Skipped events that are lost: `(skipped runs, catches)` and the catches
/// the tracker dropped as repeats. Every catch is a skipped run or a repeat,
/// so this is exact; a repeat the tracker could not recognise (its socket
/// untracked) only saturates it at 0.
fn uncaught((skipped, caught): (u64, u64), repeats: u64) -> u64 {
    (skipped + repeats).saturating_sub(caught)
}

/// A numeric field of an fdinfo file (`name:\tvalue`).
fn fdinfo_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

/// A per-CPU counter array (`lost`, `caught`), mapped read-only into our
/// memory: reading it needs no syscall and no privilege, so it keeps working
/// after `--user` drops them.
struct CpuCounters(ArrayMapping);

impl CpuCounters {
    fn map(map: Map) -> Result<Self> {
        ArrayMapping::new(map, 8, "a per-CPU counter").map(Self)
    }

    fn sum(&self) -> u64 {
        #[expect(clippy::cast_ptr_alignment, reason = "the mapping is page-aligned")]
        let values = self.0.mapping.as_ptr().cast::<u64>();
        (0..self.0.entries)
            // SAFETY: `entries` u64 values lie within the live, page-aligned
            // mapping; the kernel updates them concurrently, hence the
            // volatile read.
            .map(|i| unsafe { values.add(i).read_volatile() })
            .sum()
    }
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &Hook, mode: HookMode) -> Result<Attachment> {
    let btf_attempt = if mode == HookMode::Classic {
        None
    } else {
        Some(attach_btf(ebpf, btf, hook.btf_program, hook.name))
    };
    match btf_attempt {
        Some(Ok(())) => Ok(Attachment::Btf),
        Some(Err(e)) if mode == HookMode::Btf => Err(e),
        Some(Err(e)) => {
            log::warn!(
                "tp_btf/{} unavailable ({e:#}); using the classic tracepoint",
                hook.name
            );
            attach_classic(ebpf, hook).map(|()| Attachment::Classic)
        }
        None => attach_classic(ebpf, hook).map(|()| Attachment::Classic),
    }
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, program: &str, tracepoint: &str) -> Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the object"))?
        .try_into()?;
    prog.load(tracepoint, btf)
        .with_context(|| format!("load tp_btf/{tracepoint}"))?;
    prog.attach()
        .with_context(|| format!("attach tp_btf/{tracepoint}"))?;
    Ok(())
}

/// Attaches the program that handles the state events the main one was
/// skipped for, and sends its wake-ups (state.bpf.c). Without it those
/// events are lost, and counted so, and state events are drained on the
/// reader's timer only: a warning, not an error.
fn attach_catcher(ebpf: &mut Ebpf, btf: &Btf) -> Option<String> {
    let e = attach_btf(ebpf, btf, names::STATE_CATCHER, "inet_sock_set_state").err()?;
    Some(format!(
        "state events skipped by the kernel's recursion guard will be lost, not caught, \
         and the reader drains on its timer only ({}: {e:#})",
        names::STATE_CATCHER
    ))
}

fn attach_classic(ebpf: &mut Ebpf, hook: &Hook) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(hook.classic_program)
        .ok_or_else(|| anyhow!("program {} missing from the object", hook.classic_program))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("load tracepoint/{}/{}", hook.category, hook.name))?;
    prog.attach(hook.category, hook.name)
        .with_context(|| format!("attach tracepoint/{}/{}", hook.category, hook.name))?;
    Ok(())
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Loading and attaching need CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on
/// kernels before 5.8, where those did not exist).
fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(NeedPrivileges.into())
}

/// The caller lacks the capabilities to load BPF programs.
#[derive(Debug, thiserror::Error)]
#[error(
    "tcptrace needs root (or CAP_BPF and CAP_PERFMON) to load its BPF programs: run it with sudo"
)]
pub struct NeedPrivileges;

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the
/// memory cgroup, where this is harmless.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Lost, fdinfo_field, uncaught};

    #[test]
    fn lost_events_are_described_by_cause() {
        let before = Lost {
            ring_full: 3,
            skipped: 1,
        };
        let now = Lost {
            ring_full: 8,
            skipped: 3,
        };
        assert_eq!(now.total(), 11);
        assert_eq!(
            now.describe_since(before),
            "5 ring buffer full (raise --ring-size), \
             2 skipped by the kernel's recursion guard, nothing to tune"
        );
        let only_skipped = Lost {
            ring_full: 3,
            skipped: 4,
        };
        assert_eq!(
            only_skipped.describe_since(before),
            "3 skipped by the kernel's recursion guard, nothing to tune"
        );
        assert_eq!(before.describe_since(before), "");
    }

    #[test]
    fn skipped_runs_are_lost_unless_caught_and_repeats_are_not_catches() {
        // 10 skipped, 9 of them caught: 1 lost.
        assert_eq!(uncaught((10, 9), 0), 1);
        // 10 skipped, 12 catches of which 2 repeats of handled events: 0 lost.
        assert_eq!(uncaught((10, 12), 2), 0);
        // 10 skipped, 11 catches, 3 dropped repeats: 2 skipped ones lost.
        assert_eq!(uncaught((10, 11), 3), 2);
        // A repeat the tracker missed cannot make the count wrap.
        assert_eq!(uncaught((10, 11), 0), 0);
    }

    #[test]
    fn reads_recursion_misses_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t288\nverified_insns:\t120\n";
        assert_eq!(fdinfo_field(info, "recursion_misses"), Some(288));
        assert_eq!(fdinfo_field(info, "run_cnt"), Some(0));
        assert_eq!(fdinfo_field(info, "recursion"), None);
        assert_eq!(fdinfo_field("pos:\t0\n", "recursion_misses"), None);
    }
}
