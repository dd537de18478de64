//! The daemon's flight recorder: the last N raw records in a bounded ring in
//! memory, dumped to a recording (see [`crate::record`]) on SIGUSR2 or when a
//! trigger fires, so that the minutes before an incident can be looked at
//! afterwards with `tcptrace report` and `tcptrace events --from`.
//!
//! Triggers are checked against the daemon's cumulative snapshot once a
//! second; a fired trigger dumps at most once per cooldown. Dumps are written
//! off the event loop to a temporary name and renamed when complete.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tcptrace_ebpf::{EVENT_SIZE, RawEvent};

use crate::cli::parse_duration;
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::record::{Header, RecordingWriter};
use crate::session::Session;
use crate::snapshot::Snapshot;
use crate::tcp::TcpState;

/// Most records the recorder may keep: its ring is reserved up front.
pub const MAX_FLIGHT_EVENTS: usize = 20_000_000;

/// Records kept by default: ~26 MB (a 128-byte slot each).
pub const DEFAULT_FLIGHT_EVENTS: usize = 200_000;
/// Where dumps go without `--flight-dir` or `--output`.
pub const DEFAULT_FLIGHT_DIR: &str = "/var/lib/tcptrace";

/// The daemon's flight-recorder flags (flags only; not in the config file).
#[derive(Clone, Debug, clap::Args)]
pub struct FlightArgs {
    /// Events the flight recorder keeps in memory, 128 bytes each (the
    /// default is ~26 MB); 0 turns it off.
    #[arg(long, default_value_t = DEFAULT_FLIGHT_EVENTS, value_name = "N")]
    pub flight_events: usize,
    /// Directory for flight recordings [default: the directory of --output,
    /// else /var/lib/tcptrace].
    #[arg(long, value_name = "DIR")]
    pub flight_dir: Option<PathBuf>,
    /// Dump the flight recorder when this holds (repeatable): `resets>N/s`
    /// (resets sent and received per second, over the last second) or
    /// `STATE>N` (sockets in STATE now, all ports), e.g. `close_wait>500`.
    #[arg(long = "trigger", value_parser = Trigger::parse, value_name = "CONDITION")]
    pub triggers: Vec<Trigger>,
    /// Least time between two dumps by triggers (SIGUSR2 always dumps).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub trigger_cooldown: Duration,
}

impl FlightArgs {
    /// Flags that parse but do not go together (exit code 2, like clap's).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.flight_events > MAX_FLIGHT_EVENTS {
            return Err(ConfigError(format!(
                "--flight-events {}: at most {MAX_FLIGHT_EVENTS} (~{:.1} GB of memory)",
                self.flight_events,
                (MAX_FLIGHT_EVENTS * SLOT_BYTES) as f64 / 1e9
            )));
        }
        if self.flight_events == 0 && !self.triggers.is_empty() {
            return Err(ConfigError(
                "--trigger needs the flight recorder: --flight-events must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// Checked flags (see [`FlightArgs::check`]).
    pub fn checked(self) -> Result<Self, ConfigError> {
        self.check().map(|()| self)
    }
}

/// A condition that dumps the flight recorder.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// Resets sent plus received per second, over the last check interval.
    Resets { per_s: f64 },
    /// Sockets in `state` now, summed over every port and direction.
    State { state: TcpState, above: u64 },
}

impl Trigger {
    /// Parses `resets>100/s` or `close_wait>500`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage = "use resets>N/s or STATE>N, e.g. resets>100/s or close_wait>500";
        let Some((name, value)) = s.split_once('>') else {
            return Err(format!("'{s}': no '>' ({usage})"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("resets") {
            let n = value.strip_suffix("/s").unwrap_or(value).trim();
            let per_s: f64 = n
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    format!("'{s}': '{n}' is not a rate of resets per second ({usage})")
                })?;
            return Ok(Self::Resets { per_s });
        }
        let state: TcpState = name.parse().map_err(|e| format!("'{s}': {e} ({usage})"))?;
        if value.ends_with("/s") {
            return Err(format!(
                "'{s}': {state} counts sockets now, not a rate: drop the /s"
            ));
        }
        let above = value
            .parse()
            .map_err(|_| format!("'{s}': '{value}' is not a number of sockets ({usage})"))?;
        Ok(Self::State { state, above })
    }

    /// A short name for file names: `resets`, `close_wait`.
    pub fn tag(&self) -> String {
        match self {
            Self::Resets { .. } => "resets".into(),
            Self::State { state, .. } => state.name().to_ascii_lowercase(),
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resets { per_s } => write!(f, "resets>{per_s}/s"),
            Self::State { state, above } => {
                write!(f, "{}>{above}", state.name().to_ascii_lowercase())
            }
        }
    }
}

/// A trigger that fired: why, for the log and the file name.
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    pub tag: String,
    pub why: String,
}

pub struct FlightRecorder {
    cap: usize,
    ring: Vec<Slot>,
    /// Index of the oldest record once the ring is full.
    head: usize,
    /// Records pushed in all.
    seq: u64,
    lost: u64,
    /// (sequence number, lost counter): from that record on, the counter
    /// had that value. The first is in force at the oldest record kept.
    marks: VecDeque<(u64, u64)>,
    started_ns: u64,
    netns: Option<u32>,
    /// The daemon's --port filter (applied in the kernel), for the header.
    ports: Vec<u16>,
    pub dir: PathBuf,
    triggers: Vec<Trigger>,
    cooldown: Duration,
    last_fired: Option<Instant>,
    prev_resets: Option<(u64, Instant)>,
}

/// Bytes a kept record takes: whole cache lines, so that streaming stores
/// fill complete lines (a partly written line costs the memory controller a
/// read-modify-write).
const SLOT_BYTES: usize = EVENT_SIZE.next_multiple_of(64);

/// One kept record, cache-line aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot([u8; SLOT_BYTES]);

impl Slot {
    const EMPTY: Slot = Slot([0; SLOT_BYTES]);

    fn record(&self) -> &[u8; EVENT_SIZE] {
        self.0
            .first_chunk()
            .expect("a slot is at least a record long")
    }

    /// Writes `record` (zero-padded to the slot) past the caches (x86-64
    /// streaming stores): the recorder writes ~26 MB in a circle and reads
    /// it only for a dump, so caching it would only evict the tracker's and
    /// aggregator's working set, and each line would first be read from
    /// memory for nothing. Straight from the ring's bytes: no copy on the way.
    fn store(&mut self, record: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(record) = record.first_chunk::<EVENT_SIZE>() {
            use std::arch::x86_64::{
                __m128i, _mm_loadu_si128, _mm_setzero_si128, _mm_stream_si128,
            };
            const { assert!(EVENT_SIZE.is_multiple_of(16)) };
            #[expect(clippy::cast_ptr_alignment, reason = "read with unaligned loads")]
            let src = record.as_ptr().cast::<__m128i>();
            let dst = std::ptr::from_mut(self).cast::<__m128i>();
            for i in 0..SLOT_BYTES / 16 {
                // SAFETY: SSE2 is part of x86_64; the source is EVENT_SIZE
                // bytes, read unaligned; the slot is 64-byte aligned and
                // SLOT_BYTES long.
                unsafe {
                    let v = if i < EVENT_SIZE / 16 {
                        _mm_loadu_si128(src.add(i))
                    } else {
                        _mm_setzero_si128()
                    };
                    _mm_stream_si128(dst.add(i), v);
                }
            }
            return;
        }
        let n = record.len().min(EVENT_SIZE);
        *self = Slot::EMPTY;
        self.0[..n].copy_from_slice(&record[..n]);
    }
}

impl FlightRecorder {
    /// `None` when turned off (`--flight-events 0`). `output`: the daemon's
    /// report file, whose directory is the default for dumps. `netns`: keep
    /// only that namespace's records, as the daemon reports only it.
    pub fn new(
        args: &FlightArgs,
        output: Option<&Path>,
        netns: Option<u32>,
        lost_now: u64,
        now_ns: u64,
    ) -> Result<Option<Self>, ConfigError> {
        args.check()?;
        if args.flight_events == 0 {
            return Ok(None);
        }
        let dir = args.flight_dir.clone().unwrap_or_else(|| {
            output
                .and_then(Path::parent)
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_FLIGHT_DIR), Path::to_path_buf)
        });
        Ok(Some(Self {
            cap: args.flight_events,
            // Reserved once: untouched pages cost no memory, and growing a
            // Vec of 64-byte-aligned slots would copy it (no mremap there).
            ring: Vec::with_capacity(args.flight_events),
            head: 0,
            seq: 0,
            lost: lost_now,
            marks: VecDeque::from([(0, lost_now)]),
            started_ns: now_ns,
            netns,
            ports: Vec::new(),
            dir,
            triggers: args.triggers.clone(),
            cooldown: args.trigger_cooldown,
            last_fired: None,
            prev_resets: None,
        }))
    }

    /// The daemon's recorder (`args` checked with [`FlightArgs::check`]),
    /// logging what it keeps and where it dumps.
    pub fn from_daemon(args: &FlightArgs, cfg: &crate::config::DaemonConfig) -> Option<Self> {
        let now = Clock::monotonic_now_ns();
        let mut f = Self::new(args, cfg.output.as_deref(), cfg.netns, 0, now).unwrap_or_else(|e| {
            log::error!("flight recorder off: {e}");
            None
        });
        if let Some(f) = &mut f {
            f.ports.clone_from(&cfg.ports);
        }
        match &f {
            Some(f) => log::info!(
                "flight recorder: the last {} events (~{} MB), dumped to {} on SIGUSR2{}",
                f.cap,
                f.cap * SLOT_BYTES / 1_000_000,
                f.dir.display(),
                f.triggers
                    .iter()
                    .map(|t| format!(" or {t}"))
                    .collect::<Vec<_>>()
                    .concat()
            ),
            None => log::info!("flight recorder off"),
        }
        f
    }

    /// Keeps one ring-buffer record, forgetting the oldest when full.
    pub fn push(&mut self, bytes: &[u8]) {
        if let (Some(ns), Some(raw)) = (self.netns, RawEvent::from_bytes(bytes))
            && raw.netns != ns
        {
            return;
        }
        let slot = if self.ring.len() < self.cap {
            self.ring.push(Slot::EMPTY);
            self.ring.len() - 1
        } else {
            let at = self.head;
            // Not `%`: a division per event costs more than this branch.
            self.head = if at + 1 == self.cap { 0 } else { at + 1 };
            at
        };
        self.ring[slot].store(bytes);
        self.seq += 1;
        // Marks older than the oldest record, but the one in force there, go.
        let oldest = self.oldest_seq();
        while self.marks.len() > 1 && self.marks[1].0 <= oldest {
            self.marks.pop_front();
        }
    }

    /// The kernel's lost-events counter now.
    pub fn set_lost(&mut self, lost: u64) {
        if lost != self.lost {
            self.lost = lost;
            self.marks.push_back((self.seq, lost));
        }
    }

    /// Records kept now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn oldest_seq(&self) -> u64 {
        self.seq - self.ring.len() as u64
    }

    /// Records oldest first.
    fn records(&self) -> impl Iterator<Item = &[u8; EVENT_SIZE]> {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of x86_64. Orders the streaming stores of
        // `Slot::store` before what follows.
        unsafe {
            std::arch::x86_64::_mm_sfence();
        }
        self.ring[self.head..]
            .iter()
            .chain(&self.ring[..self.head])
            .map(Slot::record)
    }

    /// Checks the triggers against the cumulative snapshot (before any port
    /// selection). Returns the first that holds, unless one fired less than
    /// a cooldown ago.
    pub fn check(&mut self, snap: &Snapshot, now: Instant) -> Option<Fired> {
        let resets: u64 = snap
            .ports
            .iter()
            .map(|p| p.resets_sent_total() + p.resets_received.values().sum::<u64>())
            .sum();
        let rate = self.prev_resets.map(|(n, at)| {
            let secs = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
            resets.saturating_sub(n) as f64 / secs
        });
        self.prev_resets = Some((resets, now));
        let fired = self.triggers.iter().find_map(|t| match *t {
            Trigger::Resets { per_s } => rate.filter(|r| *r > per_s).map(|r| Fired {
                tag: t.tag(),
                why: format!("{t}: {r:.0} resets/s"),
            }),
            Trigger::State { state, above } => {
                let n: u64 = snap.ports.iter().map(|p| p.now(state)).sum();
                (n > above).then(|| Fired {
                    tag: t.tag(),
                    why: format!("{t}: {n} sockets in {state}"),
                })
            }
        })?;
        if self
            .last_fired
            .is_some_and(|at| now.saturating_duration_since(at) < self.cooldown)
        {
            return None;
        }
        self.last_fired = Some(now);
        Some(fired)
    }

    /// A copy of what is kept, to be written off the event loop. `header`
    /// describes the host; its start and lost counter are set here.
    pub fn dump(&self, mut header: Header) -> Dump {
        let records: Vec<[u8; EVENT_SIZE]> = self.records().copied().collect();
        let oldest = self.oldest_seq();
        let wrapped = self.seq > self.ring.len() as u64;
        header.started_ns = match records.first() {
            Some(r) if wrapped => u64::from_le_bytes(r[..8].try_into().unwrap_or_default()),
            _ => self.started_ns,
        };
        header.lost_at_start = self.marks.front().map_or(self.lost, |m| m.1);
        header.record_size = EVENT_SIZE as u16;
        let marks = self
            .marks
            .iter()
            .skip(1)
            .map(|&(seq, lost)| ((seq.saturating_sub(oldest)) as usize, lost))
            .collect();
        Dump {
            header,
            records,
            marks,
        }
    }
}

/// The flight recorder's contents at one moment.
pub struct Dump {
    pub header: Header,
    records: Vec<[u8; EVENT_SIZE]>,
    /// (index of the first record after the change, lost counter).
    marks: Vec<(usize, u64)>,
}

impl Dump {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the recording: blocks split where the lost counter moved, so
    /// each block carries the counter as it was after its records.
    pub fn write_to(&self, out: impl Write, now_ns: u64) -> io::Result<()> {
        let mut w = RecordingWriter::create(out, &self.header)?;
        let mut marks = self.marks.iter().peekable();
        for (i, rec) in self.records.iter().enumerate() {
            while let Some(&&(at, lost)) = marks.peek() {
                if at > i {
                    break;
                }
                w.set_lost(lost);
                w.flush_block(0)?;
                marks.next();
            }
            w.push(rec)?;
        }
        w.flush_block(0)?;
        for &(_, lost) in marks {
            w.set_lost(lost);
        }
        w.finish(now_ns)?;
        Ok(())
    }

    /// Writes the recording into `dir` under a temporary name, syncs it and
    /// renames it to `name`, so a complete file appears at once.
    pub fn write_file(&self, dir: &Path, name: &str, now_ns: u64) -> io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(name);
        let result = (|| {
            let mut file = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            self.write_to(&mut file, now_ns)?;
            let file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }
}

/// The file name of a dump: `tcptrace-flight-20261123T192110.623Z-close_wait.tcptrace`.
pub fn file_name(clock: Clock, now_ns: u64, tag: &str) -> String {
    let when = clock.wall(now_ns).strftime("%Y%m%dT%H%M%S%.3fZ");
    format!("tcptrace-flight-{when}-{tag}.tcptrace")
}

/// Daemon hook, once a second with the cumulative snapshot: dumps if a
/// trigger fires.
pub fn check(session: &mut Session, snap: &Snapshot) {
    let fired = session
        .flight
        .as_mut()
        .and_then(|f| f.check(snap, Instant::now()));
    if let Some(fired) = fired {
        log::warn!("flight recorder triggered by {}", fired.why);
        dump(session, &fired.tag, &fired.why);
    }
}

/// Daemon hook: dumps the flight recorder now (SIGUSR2, or a trigger),
/// writing the file on a blocking thread.
pub fn dump(session: &mut Session, tag: &str, why: &str) {
    let Some(flight) = &session.flight else {
        log::warn!("{why}: the flight recorder is off (--flight-events 0)");
        return;
    };
    let now = Clock::monotonic_now_ns();
    let cfg = session.agg.config();
    let mut header = Header::this_host(
        &format!("flight recorder ({why})"),
        session.clock,
        &session.reasons,
        now,
    );
    header.synack_retries = cfg.synack_retries;
    header.ephemeral = (*cfg.ephemeral.start(), *cfg.ephemeral.end());
    header.netns = cfg.netns;
    header.ports.clone_from(&flight.ports);
    let dump = flight.dump(header);
    let dir = flight.dir.clone();
    let name = file_name(session.clock, now, tag);
    let why = why.to_string();
    tokio::task::spawn_blocking(move || match dump.write_file(&dir, &name, now) {
        Ok(path) => log::info!(
            "flight recorder: {} events written to {} ({why})",
            dump.len(),
            path.display()
        ),
        Err(e) => log::error!(
            "flight recorder: cannot write {}: {e}",
            dir.join(&name).display()
        ),
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::event::{Detail, Event, encode};
    use crate::reasons::ResetReasons;
    use crate::record::{RecordingReader, replay_report};
    use crate::snapshot::Direction;
    use crate::tcp::Family;

    fn args(extra: &[&str]) -> FlightArgs {
        let mut argv = vec!["tcptrace", "daemon"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Daemon(d) => d.flight,
            _ => unreachable!(),
        }
    }

    #[test]
    fn triggers_parse_with_clear_errors() {
        assert_eq!(
            Trigger::parse("resets>100/s"),
            Ok(Trigger::Resets { per_s: 100.0 })
        );
        assert_eq!(
            Trigger::parse("RESETS > 2.5"),
            Ok(Trigger::Resets { per_s: 2.5 })
        );
        assert_eq!(
            Trigger::parse("close_wait>500"),
            Ok(Trigger::State {
                state: TcpState::CloseWait,
                above: 500
            })
        );
        assert_eq!(
            Trigger::parse("syn-recv>10").unwrap().to_string(),
            "syn_recv>10"
        );
        assert_eq!(
            Trigger::parse("resets>100/s").unwrap().to_string(),
            "resets>100/s"
        );
        let err = |s| Trigger::parse(s).unwrap_err();
        assert!(err("resets").contains("no '>'"), "{}", err("resets"));
        assert!(err("resets>many/s").contains("'many' is not a rate"));
        assert!(err("resets>-1/s").contains("is not a rate"));
        assert!(err("sleepy>5").contains("unknown TCP state 'sleepy'"));
        assert!(err("close_wait>5/s").contains("not a rate: drop the /s"));
        assert!(err("close_wait>lots").contains("'lots' is not a number"));
    }

    #[test]
    fn flags_and_defaults() {
        let a = args(&[]);
        assert_eq!(a.flight_events, DEFAULT_FLIGHT_EVENTS);
        assert_eq!(a.trigger_cooldown, Duration::from_mins(5));
        assert!(a.triggers.is_empty());
        let a = args(&[
            "--trigger",
            "resets>100/s",
            "--trigger",
            "close_wait>500",
            "--flight-events",
            "10",
            "--trigger-cooldown",
            "30s",
            "--flight-dir",
            "/tmp/f",
        ]);
        assert_eq!(a.triggers.len(), 2);
        assert_eq!(
            (a.flight_events, a.trigger_cooldown),
            (10, Duration::from_secs(30))
        );
        let e = crate::cli::Cli::try_parse_from(["tcptrace", "daemon", "--trigger", "bogus"])
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("no '>'"), "{e}");

        // Where dumps go.
        let dir = |a: &FlightArgs, out: Option<&str>| {
            FlightRecorder::new(a, out.map(Path::new), None, 0, 0)
                .unwrap()
                .unwrap()
                .dir
        };
        assert_eq!(dir(&args(&[]), None), PathBuf::from(DEFAULT_FLIGHT_DIR));
        assert_eq!(
            dir(&args(&[]), Some("/var/log/tcptrace/r.jsonl")),
            PathBuf::from("/var/log/tcptrace")
        );
        assert_eq!(
            dir(&args(&[]), Some("r.jsonl")),
            PathBuf::from(DEFAULT_FLIGHT_DIR)
        );
        assert_eq!(
            dir(&args(&["--flight-dir", "/x"]), Some("/y/r")),
            PathBuf::from("/x")
        );
        assert!(
            FlightRecorder::new(&args(&["--flight-events", "0"]), None, None, 0, 0)
                .unwrap()
                .is_none()
        );
        let e = FlightRecorder::new(
            &args(&["--flight-events", "0", "--trigger", "close_wait>1"]),
            None,
            None,
            0,
            0,
        )
        .err()
        .unwrap();
        assert!(e.0.contains("--flight-events must be above 0"));
        let e = FlightRecorder::new(&args(&["--flight-events", "20000001"]), None, None, 0, 0)
            .err()
            .unwrap();
        assert_eq!(
            e.0,
            "--flight-events 20000001: at most 20000000 (~2.6 GB of memory)"
        );
    }

    fn record(ts_ns: u64, netns: u32, port: u16) -> [u8; EVENT_SIZE] {
        encode(&Event {
            ts_ns,
            sock_id: ts_ns,
            id_is_addr: false,
            caught: false,
            netns,
            family: Family::Ipv4,
            local: format!("127.0.0.1:{port}").parse().unwrap(),
            remote: "127.0.0.1:9".parse().unwrap(),
            task: None,
            detail: Detail::RecvReset {
                state: TcpState::SynSent,
            },
        })
        .to_bytes()
    }

    fn header() -> Header {
        Header::this_host(
            "flight recorder (test)",
            Clock::with_offset(0),
            &ResetReasons::default(),
            0,
        )
    }

    /// Timestamps, (records, lost) per block, and the reader (for its header).
    type ReadBack = (
        Vec<u64>,
        Vec<(usize, u64)>,
        RecordingReader<io::Cursor<Vec<u8>>>,
    );

    fn read_back(d: &Dump) -> ReadBack {
        let mut bytes = Vec::new();
        d.write_to(&mut bytes, 1_000_000).unwrap();
        let mut r = RecordingReader::new(io::Cursor::new(bytes), None).unwrap();
        let mut ts = Vec::new();
        let mut blocks = Vec::new();
        while let Some(b) = r.next_block() {
            blocks.push((b.len(), b.lost));
            ts.extend(
                b.records()
                    .map(|x| u64::from_le_bytes(x[..8].try_into().unwrap())),
            );
        }
        assert!(r.account().is_complete(), "{}", r.account());
        (ts, blocks, r)
    }

    #[test]
    fn the_ring_keeps_the_last_n_records_and_the_losses_among_them() {
        let mut f = FlightRecorder::new(&args(&["--flight-events", "5"]), None, Some(7), 2, 50)
            .unwrap()
            .unwrap();
        for ts in 1..=3 {
            f.push(&record(ts, 7, 80));
        }
        f.push(&record(99, 8, 80)); // another namespace: not kept
        let (ts, _, r) = read_back(&f.dump(header()));
        assert_eq!(ts, [1, 2, 3]);
        assert_eq!(r.header().started_ns, 50, "not wrapped: since the start");
        assert_eq!(r.header().lost_at_start, 2);

        f.set_lost(4); // 2 lost after record 3
        for ts in 4..=6 {
            f.push(&record(ts, 7, 80));
        }
        f.set_lost(5);
        f.push(&record(7, 7, 80));
        assert_eq!(f.len(), 5);
        let d = f.dump(header());
        let (ts, blocks, r) = read_back(&d);
        assert_eq!(ts, [3, 4, 5, 6, 7], "the last 5, oldest first");
        assert_eq!(r.header().started_ns, 3, "wrapped: from the oldest kept");
        assert_eq!(r.header().lost_at_start, 2, "the counter at record 3");
        assert_eq!(blocks, [(1, 4), (3, 5), (1, 5)]);
        assert_eq!(r.lost(), 5);

        for ts in 8..=20 {
            f.push(&record(ts, 7, 80));
        }
        let (ts, blocks, r) = read_back(&f.dump(header()));
        assert_eq!(ts, [16, 17, 18, 19, 20]);
        assert_eq!(
            r.header().lost_at_start,
            5,
            "older losses are before the window"
        );
        assert_eq!(blocks, [(5, 5)]);
        assert!(f.marks.len() == 1, "marks stay bounded: {:?}", f.marks);
    }

    #[test]
    fn a_dump_file_appears_whole_and_reports() {
        let dir = std::env::temp_dir().join(format!("tcptrace-flight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = FlightRecorder::new(&args(&[]), None, None, 0, 0)
            .unwrap()
            .unwrap();
        for ts in 1..=4 {
            f.push(&record(ts * 1_000, 7, 40_000 + ts as u16));
        }
        let name = file_name(Clock::with_offset(1_700_000_000_000_000_000), 0, "sigusr2");
        assert_eq!(
            name,
            "tcptrace-flight-20231114T221320.000Z-sigusr2.tcptrace"
        );
        let path = f.dump(header()).write_file(&dir, &name, 10_000).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from(&name)],
            "no temporary left"
        );
        let mut r = RecordingReader::open(&path).unwrap();
        let report = replay_report(&mut r);
        let refused = report.snapshot.port(9, Direction::Out).unwrap();
        assert_eq!(refused.resets_received[&TcpState::SynSent], 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A tracker and aggregator fed synthetic events: sockets held in
    /// CLOSE_WAIT on :8080, and refused connects on :9 (a reset sent and
    /// one received each).
    struct Host {
        tracker: crate::track::Tracker,
        agg: crate::aggregate::Aggregator,
        next: u64,
    }

    impl Host {
        fn new() -> Self {
            Self {
                tracker: crate::track::Tracker::new(1024),
                agg: crate::aggregate::Aggregator::new(
                    crate::aggregate::AggregatorConfig::default(),
                    0,
                ),
                next: 1,
            }
        }

        fn feed(&mut self, local: &str, remote: &str, detail: Detail) {
            self.next += 1;
            let ev = Event {
                ts_ns: self.next,
                sock_id: self.next,
                id_is_addr: false,
                caught: false,
                netns: 1,
                family: Family::Ipv4,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                task: None,
                detail,
            };
            let note = self.tracker.observe(&ev);
            self.agg.add(&ev, &note, &self.tracker);
        }

        fn close_wait(&mut self, n: usize) {
            for i in 0..n {
                let remote = format!("127.0.0.1:{}", 40_000 + self.next + i as u64);
                self.feed(
                    "127.0.0.1:8080",
                    &remote,
                    Detail::State {
                        old: TcpState::Established,
                        new: TcpState::CloseWait,
                        srtt_us: None,
                        total_retrans: None,
                    },
                );
            }
        }

        fn refused(&mut self, n: usize) {
            for _ in 0..n {
                self.feed(
                    "127.0.0.1:9",
                    "127.0.0.1:50000",
                    Detail::SendReset {
                        state: None,
                        reason: Some(1),
                    },
                );
                self.feed(
                    "127.0.0.1:50000",
                    "127.0.0.1:9",
                    Detail::RecvReset {
                        state: TcpState::SynSent,
                    },
                );
            }
        }

        fn snap(&mut self) -> Snapshot {
            self.agg.snapshot(
                &self.tracker,
                self.next,
                String::new(),
                &ResetReasons::default(),
            )
        }
    }

    #[test]
    fn triggers_fire_on_thresholds_at_most_once_per_cooldown() {
        let a = args(&[
            "--trigger",
            "close_wait>5",
            "--trigger",
            "resets>100/s",
            "--trigger-cooldown",
            "10s",
        ]);
        let mut f = FlightRecorder::new(&a, None, None, 0, 0).unwrap().unwrap();
        let mut host = Host::new();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        host.close_wait(5);
        assert_eq!(f.check(&host.snap(), t0), None, "5 is not above 5");
        host.close_wait(1);
        host.refused(10);
        let fired = f.check(&host.snap(), t0 + s).unwrap();
        assert_eq!(fired.tag, "close_wait");
        assert_eq!(fired.why, "close_wait>5: 6 sockets in CLOSE_WAIT");
        assert_eq!(f.check(&host.snap(), t0 + 2 * s), None, "cooling down");
        // Resets sent + received per second over the last check.
        let mut f2 = FlightRecorder::new(&a, None, None, 0, 0).unwrap().unwrap();
        let mut h2 = Host::new();
        assert_eq!(f2.check(&h2.snap(), t0), None);
        h2.refused(45);
        assert_eq!(f2.check(&h2.snap(), t0 + 9 * s), None, "10/s");
        h2.refused(60);
        let fired = f2.check(&h2.snap(), t0 + 10 * s).unwrap();
        assert_eq!(
            (fired.tag.as_str(), fired.why.as_str()),
            ("resets", "resets>100/s: 120 resets/s")
        );
        h2.refused(100);
        assert_eq!(f2.check(&h2.snap(), t0 + 11 * s), None, "cooling down");
        h2.refused(1_000);
        assert!(f2.check(&h2.snap(), t0 + 20 * s).is_some(), "cooled down");
        // The first recorder still sees its 6 CLOSE_WAIT once cooled down.
        assert!(f.check(&host.snap(), t0 + 11 * s).is_some());
    }
}
