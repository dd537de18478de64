//! Recordings: every event of a trace in a compact, versioned binary file, to
//! be reported on or replayed later, on any host, without root or BPF.
//!
//! The file is a header, then blocks of raw ring-buffer records (the 112-byte
//! `struct tcptrace_event`, exactly as the kernel wrote it). Every part is
//! length-prefixed and CRC-32 checked, and the writer hands each block to the
//! kernel as one write, so a crash or a full disk loses at most the block being
//! written; the reader returns every complete block before a torn or corrupted
//! tail and says where it stopped, and never panics on any input.
//!
//! Byte layout (integers little-endian; `str` is a u16 length then UTF-8):
//!
//! ```text
//! header   magic      8   "TCPTRACE"
//!          version    u16 FORMAT_VERSION (a reader refuses newer versions)
//!          body_len   u32 length of body (at most 1 MiB)
//!          body_crc   u32 CRC-32 (IEEE) of body
//!          body:      record_size u16, clock_offset_ns i128 (CLOCK_REALTIME -
//!                     CLOCK_MONOTONIC), started_ns u64, lost_at_start u64,
//!                     synack_retries u32, ephemeral_lo u16, ephemeral_hi u16,
//!                     kernel str, hostname str, tcptrace_version str,
//!                     source str, ports (u16 count, u16 each),
//!                     netns (u8 present, u32), reasons (u32 count,
//!                     then u32 value + str name each); fields added later
//!                     within a version go at the end and older readers skip them
//! block    magic      4   "TTBK"
//!          len        u32 payload length (24 + count * record_size, at most 64 MiB)
//!          crc        u32 CRC-32 of payload
//!          payload:   kind u8 (1 events, 2 end), 3 reserved bytes, count u32,
//!                     lost u64 (the kernel's lost-events counter when the
//!                     block was written), flushed_ns u64 (CLOCK_MONOTONIC),
//!                     then count records of record_size bytes
//! ```
//!
//! A cleanly closed recording ends with an `end` block; one without it was cut
//! short (killed recorder, full disk) but everything before is still good.
//! Blocks of a kind this reader does not know are skipped.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use tcptrace_ebpf::{EVENT_SIZE, RawEvent};
use thiserror::Error;

use crate::aggregate::{Aggregator, AggregatorConfig};
use crate::clock::Clock;
use crate::reasons::ResetReasons;
use crate::report::Report;
use crate::session::MAX_TRACKED_SOCKETS;
use crate::track::Tracker;

/// The first 8 bytes of every recording.
pub const MAGIC: &[u8; 8] = b"TCPTRACE";
/// The format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Magic, version, body length, body CRC.
pub const PREAMBLE_LEN: usize = 8 + 2 + 4 + 4;
/// Larger header bodies are refused as malformed.
pub const MAX_HEADER_BODY: u32 = 1 << 20;

const BLOCK_MAGIC: &[u8; 4] = b"TTBK";
/// Block magic, payload length, payload CRC.
pub const BLOCK_HEAD_LEN: usize = 4 + 4 + 4;
/// Kind, reserved, count, lost, flushed_ns.
pub const PAYLOAD_HEAD_LEN: usize = 1 + 3 + 4 + 8 + 8;
/// Larger blocks are refused as malformed (the writer's are ~450 KiB).
pub const MAX_BLOCK_PAYLOAD: u32 = 64 << 20;
/// Records per block the writer collects before writing one out.
pub const BLOCK_RECORDS: u32 = 4096;

const KIND_EVENTS: u8 = 1;
const KIND_END: u8 = 2;

/// Everything a recording says about where and how it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes per record: `EVENT_SIZE` for files this build writes.
    pub record_size: u16,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC on the recording host.
    pub clock_offset_ns: i128,
    /// CLOCK_MONOTONIC when recording began.
    pub started_ns: u64,
    /// The kernel's lost-events counter when recording began; blocks carry
    /// the counter's later values.
    pub lost_at_start: u64,
    /// net.ipv4.tcp_synack_retries of the recording host.
    pub synack_retries: u32,
    /// net.ipv4.ip_local_port_range of the recording host (for attribution).
    pub ephemeral: (u16, u16),
    /// uname release of the recording host.
    pub kernel: String,
    pub hostname: String,
    pub tcptrace_version: String,
    /// What made the file: `record`, or `flight recorder (why)`.
    pub source: String,
    /// Filters the recorder applied (events with either port; one netns).
    pub ports: Vec<u16>,
    pub netns: Option<u32>,
    /// `enum sk_rst_reason` of the recording kernel, value and name.
    pub reasons: Vec<(u32, String)>,
}

impl Header {
    /// A header describing this host now.
    pub fn this_host(source: &str, clock: Clock, reasons: &ResetReasons, started_ns: u64) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_or_else(|_| "unknown".to_string(), |s| s.trim().into())
        };
        let eph = crate::session::ephemeral_ports();
        Self {
            record_size: EVENT_SIZE as u16,
            clock_offset_ns: clock.offset_ns(),
            started_ns,
            lost_at_start: 0,
            synack_retries: crate::session::synack_retries(),
            ephemeral: (*eph.start(), *eph.end()),
            kernel: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
            tcptrace_version: env!("CARGO_PKG_VERSION").to_string(),
            source: source.to_string(),
            ports: Vec::new(),
            netns: None,
            reasons: reasons.iter().map(|(v, n)| (v, n.to_string())).collect(),
        }
    }

    /// The recording kernel's reset-reason names.
    pub fn reset_reasons(&self) -> ResetReasons {
        ResetReasons::from_pairs(self.reasons.iter().map(|(v, n)| (*v, n.as_str())))
    }

    /// Maps the recording's monotonic timestamps to wall-clock time.
    pub fn clock(&self) -> Clock {
        Clock::with_offset(self.clock_offset_ns)
    }

    /// The aggregation settings the recording host had.
    pub fn aggregator_config(&self) -> AggregatorConfig {
        AggregatorConfig {
            synack_retries: self.synack_retries,
            netns: self.netns,
            ephemeral: self.ephemeral.0..=self.ephemeral.1,
            ..AggregatorConfig::default()
        }
    }

    /// The whole header as written to the file: preamble and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(&self.record_size.to_le_bytes());
        body.extend_from_slice(&self.clock_offset_ns.to_le_bytes());
        body.extend_from_slice(&self.started_ns.to_le_bytes());
        body.extend_from_slice(&self.lost_at_start.to_le_bytes());
        body.extend_from_slice(&self.synack_retries.to_le_bytes());
        body.extend_from_slice(&self.ephemeral.0.to_le_bytes());
        body.extend_from_slice(&self.ephemeral.1.to_le_bytes());
        for s in [
            &self.kernel,
            &self.hostname,
            &self.tcptrace_version,
            &self.source,
        ] {
            put_str(&mut body, s);
        }
        let ports = &self.ports[..self.ports.len().min(usize::from(u16::MAX))];
        body.extend_from_slice(&(ports.len() as u16).to_le_bytes());
        for p in ports {
            body.extend_from_slice(&p.to_le_bytes());
        }
        body.push(u8::from(self.netns.is_some()));
        body.extend_from_slice(&self.netns.unwrap_or(0).to_le_bytes());
        body.extend_from_slice(&(self.reasons.len() as u32).to_le_bytes());
        for (value, name) in &self.reasons {
            body.extend_from_slice(&value.to_le_bytes());
            put_str(&mut body, name);
        }
        let mut out = Vec::with_capacity(PREAMBLE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode_body(body: &[u8]) -> Result<Self, String> {
        let mut c = Cursor { buf: body, pos: 0 };
        let record_size = c.u16("record_size")?;
        let clock_offset_ns = i128::from_le_bytes(c.array("clock_offset_ns")?);
        let started_ns = c.u64("started_ns")?;
        let lost_at_start = c.u64("lost_at_start")?;
        let synack_retries = c.u32("synack_retries")?;
        let ephemeral = (c.u16("ephemeral_lo")?, c.u16("ephemeral_hi")?);
        let kernel = c.str("kernel")?;
        let hostname = c.str("hostname")?;
        let tcptrace_version = c.str("tcptrace_version")?;
        let source = c.str("source")?;
        let n_ports = c.u16("ports")?;
        let mut ports = Vec::with_capacity(usize::from(n_ports));
        for _ in 0..n_ports {
            ports.push(c.u16("port")?);
        }
        let has_netns = c.array::<1>("netns")?[0] != 0;
        let netns = c.u32("netns")?;
        let n_reasons = c.u32("reasons")?;
        // Each takes at least 6 bytes: a count larger than what is left is a lie.
        if u64::from(n_reasons) * 6 > (body.len() - c.pos) as u64 {
            return Err(format!(
                "{n_reasons} reset reasons do not fit in the header"
            ));
        }
        let mut reasons = Vec::with_capacity(n_reasons as usize);
        for _ in 0..n_reasons {
            let value = c.u32("reason value")?;
            reasons.push((value, c.str("reason name")?));
        }
        if usize::from(record_size) < EVENT_SIZE {
            return Err(format!(
                "records of {record_size} bytes are shorter than this build's {EVENT_SIZE}"
            ));
        }
        Ok(Self {
            record_size,
            clock_offset_ns,
            started_ns,
            lost_at_start,
            synack_retries,
            ephemeral,
            kernel,
            hostname,
            tcptrace_version,
            source,
            ports,
            netns: has_netns.then_some(netns),
            reasons,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Reads fields from a header body; running out is an error naming the field.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| format!("ends inside {what}"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn str(&mut self, what: &str) -> Result<String, String> {
        let n = self.u16(what)?;
        let bytes = self.take(usize::from(n), what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// Writes a recording: the header at once, then blocks of records.
pub struct RecordingWriter<W: Write> {
    out: W,
    record_size: usize,
    /// The payload of the block being collected (header space included).
    block: Vec<u8>,
    count: u32,
    max_records: u32,
    lost: u64,
    lost_written: u64,
    last_ts: u64,
    events: u64,
    bytes: u64,
}

impl<W: Write> RecordingWriter<W> {
    /// Writes `header` to `out` and flushes it.
    pub fn create(mut out: W, header: &Header) -> io::Result<Self> {
        let head = header.encode();
        out.write_all(&head)?;
        out.flush()?;
        let record_size = usize::from(header.record_size);
        Ok(Self {
            out,
            record_size,
            block: Vec::new(),
            count: 0,
            max_records: BLOCK_RECORDS,
            lost: header.lost_at_start,
            lost_written: header.lost_at_start,
            last_ts: header.started_ns,
            events: 0,
            bytes: head.len() as u64,
        })
    }

    /// Records per block before one is written out (at least 1).
    #[must_use]
    pub fn with_block_records(mut self, n: u32) -> Self {
        self.max_records = n.max(1);
        self
    }

    /// Appends one ring-buffer record (cut or zero-padded to the record
    /// size); a full block is written out at once.
    pub fn push(&mut self, record: &[u8]) -> io::Result<()> {
        if self.block.is_empty() {
            self.block.resize(PAYLOAD_HEAD_LEN, 0);
        }
        let n = record.len().min(self.record_size);
        self.block.extend_from_slice(&record[..n]);
        self.block
            .resize(self.block.len() + self.record_size - n, 0);
        if let Some(ts) = record.get(..8) {
            let ts = u64::from_le_bytes(ts.try_into().unwrap_or_default());
            self.last_ts = self.last_ts.max(ts);
        }
        self.count += 1;
        if self.count >= self.max_records {
            self.write_block(KIND_EVENTS, 0)?;
        }
        Ok(())
    }

    /// The kernel's lost-events counter now; written with the next block.
    pub fn set_lost(&mut self, lost: u64) {
        self.lost = lost;
    }

    /// Writes the records collected so far as a block (or an empty block if
    /// only the lost counter moved) and flushes `out`. `now_ns`: CLOCK_MONOTONIC.
    pub fn flush_block(&mut self, now_ns: u64) -> io::Result<()> {
        if self.count > 0 || self.lost != self.lost_written {
            self.write_block(KIND_EVENTS, now_ns)?;
        }
        self.out.flush()
    }

    /// Writes what is pending and the end block, flushes, and returns `out`.
    pub fn finish(mut self, now_ns: u64) -> io::Result<W> {
        if self.count > 0 {
            self.write_block(KIND_EVENTS, now_ns)?;
        }
        self.write_block(KIND_END, now_ns)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_block(&mut self, kind: u8, now_ns: u64) -> io::Result<()> {
        if self.block.is_empty() {
            self.block.resize(PAYLOAD_HEAD_LEN, 0);
        }
        let flushed = now_ns.max(self.last_ts);
        self.block[0] = kind;
        self.block[1..4].fill(0);
        self.block[4..8].copy_from_slice(&self.count.to_le_bytes());
        self.block[8..16].copy_from_slice(&self.lost.to_le_bytes());
        self.block[16..24].copy_from_slice(&flushed.to_le_bytes());
        let mut framed = Vec::with_capacity(BLOCK_HEAD_LEN + self.block.len());
        framed.extend_from_slice(BLOCK_MAGIC);
        framed.extend_from_slice(&(self.block.len() as u32).to_le_bytes());
        framed.extend_from_slice(&crc32fast::hash(&self.block).to_le_bytes());
        framed.extend_from_slice(&self.block);
        // One write per block: a crash tears at most this one.
        self.out.write_all(&framed)?;
        self.bytes += framed.len() as u64;
        self.events += u64::from(self.count);
        self.lost_written = self.lost;
        self.count = 0;
        self.block.clear();
        Ok(())
    }

    /// Records written out in complete blocks.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Records waiting for the next block.
    pub fn pending(&self) -> u32 {
        self.count
    }

    /// Bytes written out.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// Why a recording could not be opened at all.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a tcptrace recording (it begins with \"{0}\", not \"TCPTRACE\")")]
    BadMagic(String),
    #[error(
        "recording format version {0} is not supported: this tcptrace ({ver}) reads version {FORMAT_VERSION}{hint}",
        ver = env!("CARGO_PKG_VERSION"),
        hint = newer_hint(*.0)
    )]
    UnsupportedVersion(u16),
    #[error("truncated header: {have} of {need} bytes")]
    Truncated { have: u64, need: u64 },
    #[error("header checksum mismatch: the header is corrupted")]
    Checksum,
    #[error("malformed header: {0}")]
    Malformed(String),
}

fn newer_hint(version: u16) -> &'static str {
    if version > FORMAT_VERSION {
        "; use a newer tcptrace"
    } else {
        ""
    }
}

/// What went wrong where the reader stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TailProblem {
    #[error("short block ({have} of {need} bytes)")]
    Short { have: u64, need: u64 },
    #[error("no block magic")]
    BadMagic,
    #[error("bad block length {0}")]
    BadLength(u32),
    #[error("block checksum mismatch")]
    Checksum,
    #[error("malformed block: {0}")]
    Malformed(&'static str),
    #[error("{0} bytes after the end block")]
    AfterEnd(u64),
    #[error("read error: {0}")]
    Io(String),
}

/// Where the reader stopped early, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    /// Offset of the first byte not read (the start of the bad block).
    pub at: u64,
    pub problem: TailProblem,
}

/// How much of a recording the reader could use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub events: u64,
    pub blocks: u64,
    /// Bytes of the header and complete blocks.
    pub bytes_read: u64,
    /// The file's size, when known.
    pub total_bytes: Option<u64>,
    /// The end block was read: the recorder closed the file.
    pub ended: bool,
    pub tail: Option<Tail>,
}

impl Account {
    /// Read to a clean end: the end block and nothing wrong.
    pub fn is_complete(&self) -> bool {
        self.ended && self.tail.is_none()
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} events read, {} ", self.events, self.bytes_read)?;
        match self.total_bytes {
            Some(t) => write!(f, "of {t} bytes")?,
            None => write!(f, "bytes")?,
        }
        match &self.tail {
            Some(Tail {
                problem: TailProblem::AfterEnd(n),
                ..
            }) => write!(f, "; {n} bytes of garbage after the end block"),
            Some(t) => write!(f, "; tail torn at byte {}: {}", t.at, t.problem),
            None if !self.ended => write!(
                f,
                "; no end block: the recorder did not close the file (killed, crashed or out of disk)"
            ),
            None => Ok(()),
        }
    }
}

/// One block of records and the lost counter when it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The kernel's lost-events counter (cumulative, see `Header::lost_at_start`).
    pub lost: u64,
    pub flushed_ns: u64,
    record_size: usize,
    data: Vec<u8>,
}

impl Block {
    /// The records, each `record_size` bytes (the first `EVENT_SIZE` are the
    /// kernel's record).
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.data.chunks_exact(self.record_size)
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.record_size
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Reads a recording block by block. Never panics; after `next_block`
/// returns `None`, [`RecordingReader::account`] says how far it got and why.
pub struct RecordingReader<R: Read> {
    input: R,
    header: Header,
    version: u16,
    pos: u64,
    total: Option<u64>,
    blocks: u64,
    events: u64,
    lost: u64,
    last_flush_ns: Option<u64>,
    ended: bool,
    tail: Option<Tail>,
    done: bool,
}

impl RecordingReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let file = File::open(path)?;
        let total = file.metadata().ok().map(|m| m.len());
        Self::new(BufReader::with_capacity(1 << 20, file), total)
    }
}

impl<R: Read> RecordingReader<R> {
    /// Reads and checks the header. `total`: the input's size, if known
    /// (for the account, and to refuse block lengths past the end early).
    pub fn new(mut input: R, total: Option<u64>) -> Result<Self, OpenError> {
        let mut pre = [0u8; PREAMBLE_LEN];
        let have = read_up_to(&mut input, &mut pre)?;
        let magic_have = have.min(MAGIC.len());
        if pre[..magic_have] != MAGIC[..magic_have] {
            return Err(OpenError::BadMagic(
                pre[..magic_have].escape_ascii().to_string(),
            ));
        }
        if have < PREAMBLE_LEN {
            return Err(OpenError::Truncated {
                have: have as u64,
                need: PREAMBLE_LEN as u64,
            });
        }
        let version = u16::from_le_bytes([pre[8], pre[9]]);
        if version == 0 || version > FORMAT_VERSION {
            return Err(OpenError::UnsupportedVersion(version));
        }
        let len = u32::from_le_bytes([pre[10], pre[11], pre[12], pre[13]]);
        let crc = u32::from_le_bytes([pre[14], pre[15], pre[16], pre[17]]);
        if len > MAX_HEADER_BODY {
            return Err(OpenError::Malformed(format!(
                "header length {len} is larger than {MAX_HEADER_BODY}"
            )));
        }
        let need = PREAMBLE_LEN as u64 + u64::from(len);
        if let Some(t) = total.filter(|t| *t < need) {
            return Err(OpenError::Truncated { have: t, need });
        }
        let mut body = vec![0u8; len as usize];
        let got = read_up_to(&mut input, &mut body)?;
        if got < body.len() {
            return Err(OpenError::Truncated {
                have: (PREAMBLE_LEN + got) as u64,
                need,
            });
        }
        if !checksum_ok(&body, crc) {
            return Err(OpenError::Checksum);
        }
        let header = Header::decode_body(&body).map_err(OpenError::Malformed)?;
        Ok(Self {
            input,
            lost: header.lost_at_start,
            header,
            version,
            pos: need,
            total,
            blocks: 0,
            events: 0,
            last_flush_ns: None,
            ended: false,
            tail: None,
            done: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's format version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The lost counter of the last block read.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// CLOCK_MONOTONIC when the last block read was written.
    pub fn last_flush_ns(&self) -> Option<u64> {
        self.last_flush_ns
    }

    pub fn account(&self) -> Account {
        Account {
            events: self.events,
            blocks: self.blocks,
            bytes_read: self.pos,
            total_bytes: self.total,
            ended: self.ended,
            tail: self.tail.clone(),
        }
    }

    fn stop(&mut self, problem: TailProblem) -> Option<Block> {
        self.tail = Some(Tail {
            at: self.pos,
            problem,
        });
        self.done = true;
        None
    }

    /// The next block of records, or `None` at the end of the recording or
    /// at the first damaged block.
    pub fn next_block(&mut self) -> Option<Block> {
        loop {
            if self.done {
                return None;
            }
            match self.read_block() {
                Ok(Some(b)) => return Some(b),
                Ok(None) => {}
                Err(problem) => return self.stop(problem),
            }
        }
    }

    /// `Ok(None)`: a block without records (skipped) or the end.
    fn read_block(&mut self) -> Result<Option<Block>, TailProblem> {
        let io = |e: io::Error| TailProblem::Io(e.to_string());
        let mut head = [0u8; BLOCK_HEAD_LEN];
        let have = read_up_to(&mut self.input, &mut head).map_err(io)?;
        if have == 0 {
            self.done = true;
            return Ok(None);
        }
        let m = have.min(BLOCK_MAGIC.len());
        if head[..m] != BLOCK_MAGIC[..m] {
            return Err(TailProblem::BadMagic);
        }
        if have < BLOCK_HEAD_LEN {
            return Err(TailProblem::Short {
                have: have as u64,
                need: BLOCK_HEAD_LEN as u64,
            });
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if (len as usize) < PAYLOAD_HEAD_LEN || len > MAX_BLOCK_PAYLOAD {
            return Err(TailProblem::BadLength(len));
        }
        let need = (BLOCK_HEAD_LEN as u64) + u64::from(len);
        if let Some(left) = self.total.map(|t| t.saturating_sub(self.pos))
            && left < need
        {
            return Err(TailProblem::Short { have: left, need });
        }
        let mut payload = vec![0u8; len as usize];
        let got = read_up_to(&mut self.input, &mut payload).map_err(io)?;
        if got < payload.len() {
            return Err(TailProblem::Short {
                have: (BLOCK_HEAD_LEN + got) as u64,
                need,
            });
        }
        if !checksum_ok(&payload, crc) {
            return Err(TailProblem::Checksum);
        }
        let kind = payload[0];
        let count = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
        let lost = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
        let flushed_ns = u64::from_le_bytes(payload[16..24].try_into().unwrap_or_default());
        let size = usize::from(self.header.record_size);
        if (len as usize - PAYLOAD_HEAD_LEN) != count as usize * size {
            return Err(TailProblem::Malformed(
                "record count does not match the block length",
            ));
        }
        self.pos += need;
        self.blocks += 1;
        match kind {
            KIND_EVENTS => {
                self.events += u64::from(count);
                self.lost = lost;
                self.last_flush_ns = Some(flushed_ns);
                payload.drain(..PAYLOAD_HEAD_LEN);
                Ok(Some(Block {
                    lost,
                    flushed_ns,
                    record_size: size,
                    data: payload,
                }))
            }
            KIND_END => {
                self.ended = true;
                self.lost = lost;
                self.last_flush_ns = Some(flushed_ns);
                self.done = true;
                let after = match self.total {
                    Some(t) => t.saturating_sub(self.pos),
                    None => io::copy(&mut self.input, &mut io::sink()).unwrap_or(0),
                };
                if after > 0 {
                    self.tail = Some(Tail {
                        at: self.pos,
                        problem: TailProblem::AfterEnd(after),
                    });
                }
                Ok(None)
            }
            // A kind a newer writer added: checked, and skipped.
            _ => Ok(None),
        }
    }
}

/// Whether `data` has checksum `crc`. Under cargo-fuzz (`--cfg fuzzing`)
/// any checksum passes, so that mutated inputs reach the parsing behind it.
fn checksum_ok(data: &[u8], crc: u32) -> bool {
    cfg!(fuzzing) || crc32fast::hash(data) == crc
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The per-port report of a whole recording, replayed through the tracker
/// and aggregator as a live session would have built it: `report` is
/// `"recording"`, `interval_s` the recording's span, and the snapshot is taken
/// at the last event. Census-only numbers (TIME_WAIT, orphaned FIN_WAIT2,
/// accept queues, sockets that predate the recording) are not in a recording.
pub fn replay_report<R: Read>(reader: &mut RecordingReader<R>) -> Report {
    let header = reader.header().clone();
    let mut tracker = Tracker::new(MAX_TRACKED_SOCKETS);
    let mut agg = Aggregator::new(header.aggregator_config(), header.started_ns);
    let mut last_ts = None;
    while let Some(block) = reader.next_block() {
        for rec in block.records() {
            if let Some(ts) =
                crate::session::ingest(&rec[..EVENT_SIZE], None, &mut tracker, &mut agg)
            {
                last_ts = Some(last_ts.map_or(ts, |t: u64| t.max(ts)));
            }
        }
    }
    agg.set_lost(reader.lost().saturating_sub(header.lost_at_start), 0);
    let now = last_ts.unwrap_or(header.started_ns);
    let end = reader.last_flush_ns().unwrap_or(now).max(now);
    let clock = header.clock();
    let mut snapshot = agg.snapshot(&tracker, now, clock.wall_ms(now), &header.reset_reasons());
    let interval_s = end.saturating_sub(header.started_ns) as f64 / 1e9;
    // The findings of the recording host's own port range, over the span.
    let findings_cfg = crate::findings::FindingsConfig {
        ephemeral: header.aggregator_config().ephemeral,
        ..crate::findings::FindingsConfig::default()
    };
    snapshot.findings = crate::findings::evaluate(&snapshot, interval_s, &findings_cfg);
    Report {
        report: "recording".to_string(),
        interval_s,
        snapshot,
    }
}

/// The raw record's netns and ports, for the recorder's filters (no decoding:
/// records that do not decode are kept, and counted when replayed).
pub fn raw_matches(record: &[u8], ports: &[u16], netns: Option<u32>) -> bool {
    let Some(raw) = RawEvent::from_bytes(record) else {
        return ports.is_empty() && netns.is_none();
    };
    netns.is_none_or(|n| n == raw.netns)
        && (ports.is_empty() || ports.contains(&raw.sport) || ports.contains(&raw.dport))
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
