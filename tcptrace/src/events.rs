//! `tcptrace events`: every TCP event, one line each, as it happens, or
//! replayed from a recording (`--from FILE`).

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::EventsArgs;
use crate::clock::Clock;
use crate::event::{self, Kind};
use crate::filter::Filter;
use crate::format;
use crate::reasons::ResetReasons;
use crate::record::RecordingReader;
use crate::session::MAX_TRACKED_SOCKETS;
use crate::signals::Shutdown;
use crate::tcp::Family;
use crate::track::Tracker;

/// Counts kept for the closing summary.
#[derive(Debug, Default)]
pub struct Counts {
    pub by_kind: BTreeMap<Kind, u64>,
    pub shown: u64,
    pub undecodable: u64,
    pub lost: u64,
}

impl Counts {
    pub fn summary(&self, untracked: u64) -> String {
        let total: u64 = self.by_kind.values().sum();
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.by_kind.get(k).unwrap_or(&0)))
            .collect();
        format!(
            "{total} events ({}), {} shown, {} lost, {} undecodable, {untracked} sockets untracked",
            kinds.join(", "),
            self.shown,
            self.lost,
            self.undecodable
        )
    }
}

pub fn filter_from(args: &EventsArgs) -> Filter {
    Filter {
        ports: args.ports.clone(),
        states: args.states.clone(),
        family: if args.ipv4 {
            Some(Family::Ipv4)
        } else if args.ipv6 {
            Some(Family::Ipv6)
        } else {
            None
        },
        netns: args.netns,
    }
}

pub async fn run(args: EventsArgs) -> Result<()> {
    let filter = filter_from(&args);
    if let Some(path) = &args.from {
        return replay(path, filter, args.json);
    }
    let crate::session::Tracing {
        tracer,
        reasons,
        clock,
        mut reader,
    } = crate::session::Tracing::start(&args.trace, args.netns, &args.ports)?;
    let mut shutdown = Shutdown::install()?;
    eprintln!("tcptrace: tracing {}; Ctrl-C to stop", tracer.describe());

    let stdout = io::stdout();
    let out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut printer = Printer::new(out, args.json, filter, clock, reasons);
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut lost_before = crate::loader::Lost::default();
    loop {
        let stopping = tokio::select! {
            () = reader.wait() => deadline.is_some_and(|d| Instant::now() >= d),
            () = shutdown.recv() => true,
        };
        reader.drain(|bytes| printer.record(bytes));
        let lost = tracer.lost_events(printer.tracker.repeats, stopping)?;
        let new = printer.lost(lost.total());
        if new > 0 {
            eprintln!(
                "tcptrace: warning: {new} events lost ({}), {} in all",
                lost.describe_since(lost_before),
                lost.total()
            );
        }
        lost_before = lost;
        if printer.flush()? || stopping {
            break;
        }
    }
    eprintln!("tcptrace: {}", printer.summary());
    Ok(())
}

/// `events --from FILE`: the same lines from a recording, offline.
fn replay(path: &Path, filter: Filter, json: bool) -> Result<()> {
    let mut rec = RecordingReader::open(path).with_context(|| path.display().to_string())?;
    let header = rec.header().clone();
    let stdout = io::stdout();
    let out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut printer = Printer::new(out, json, filter, header.clock(), header.reset_reasons());
    while let Some(block) = rec.next_block() {
        for record in block.records() {
            printer.record(record);
        }
        printer.lost(block.lost.saturating_sub(header.lost_at_start));
        if printer.flush()? {
            break;
        }
    }
    // The end block carries the counter's last value.
    printer.lost(rec.lost().saturating_sub(header.lost_at_start));
    printer.flush()?;
    eprintln!("tcptrace: {}", printer.summary());
    let account = rec.account();
    if !account.is_complete() {
        eprintln!("tcptrace: warning: {}: {account}", path.display());
    }
    Ok(())
}

/// The per-event loop shared by live tracing and replay: decodes, tracks,
/// filters and prints each record, marks gaps where events were lost, and
/// counts for the summary.
pub struct Printer<W: Write> {
    out: W,
    json: bool,
    filter: Filter,
    clock: Clock,
    reasons: ResetReasons,
    pub tracker: Tracker,
    pub counts: Counts,
    /// The first write error; nothing more is written after it.
    result: io::Result<()>,
}

impl<W: Write> Printer<W> {
    /// Starts the output (the text header unless `json`).
    pub fn new(
        mut out: W,
        json: bool,
        filter: Filter,
        clock: Clock,
        reasons: ResetReasons,
    ) -> Self {
        let result = if json {
            Ok(())
        } else {
            writeln!(out, "{}", format::TEXT_HEADER)
        };
        Self {
            out,
            json,
            filter,
            clock,
            reasons,
            tracker: Tracker::new(MAX_TRACKED_SOCKETS),
            counts: Counts::default(),
            result,
        }
    }

    /// One ring-buffer record.
    pub fn record(&mut self, bytes: &[u8]) {
        let ev = match event::decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.counts.undecodable += 1;
                log::debug!("undecodable record: {e}");
                return;
            }
        };
        let note = self.tracker.observe(&ev);
        if note.repeat {
            return;
        }
        *self.counts.by_kind.entry(ev.kind()).or_default() += 1;
        if self.result.is_ok() && self.filter.matches(&ev, &note) {
            self.counts.shown += 1;
            let line = if self.json {
                format::json_line(&ev, &note, self.clock, &self.reasons)
            } else {
                format::text_line(&ev, &note, self.clock, &self.reasons)
            };
            self.result = writeln!(self.out, "{line}");
        }
    }

    /// The lost counter (cumulative) now: if it rose, a line marks the gap
    /// in the stream. Returns how many are newly lost.
    pub fn lost(&mut self, lost: u64) -> u64 {
        if lost <= self.counts.lost {
            return 0;
        }
        let new = lost - self.counts.lost;
        self.counts.lost = lost;
        if self.result.is_ok() {
            self.result = if self.json {
                writeln!(
                    self.out,
                    r#"{{"kind":"lost","count":{new},"total":{lost}}}"#
                )
            } else {
                writeln!(self.out, "-- {new} events lost ({lost} in all) --")
            };
        }
        new
    }

    /// Flushes the output. `Ok(true)`: its reader went away (`| head`).
    pub fn flush(&mut self) -> Result<bool> {
        let result = std::mem::replace(&mut self.result, Ok(())).and_then(|()| self.out.flush());
        match result {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.result = Err(e);
                Ok(true)
            }
            Err(e) => Err(e).context("write events"),
        }
    }

    /// The closing line for stderr.
    pub fn summary(&self) -> String {
        self.counts.summary(self.tracker.untracked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Detail, Event, encode};
    use crate::record::{Header, RecordingWriter};
    use crate::tcp::TcpState;

    fn ev(ts_ns: u64, sock: u64, local: &str, remote: &str, old: TcpState, new: TcpState) -> Event {
        Event {
            ts_ns,
            sock_id: sock,
            id_is_addr: false,
            caught: false,
            netns: 7,
            family: Family::Ipv4,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            task: None,
            detail: Detail::State {
                old,
                new,
                srtt_us: None,
                total_retrans: None,
            },
        }
    }

    fn events() -> Vec<Event> {
        use TcpState::*;
        vec![
            ev(1_000, 1, "127.0.0.1:8080", "0.0.0.0:0", Close, Listen),
            ev(
                2_000,
                2,
                "127.0.0.1:8080",
                "127.0.0.1:40000",
                Listen,
                SynRecv,
            ),
            ev(
                3_000,
                2,
                "127.0.0.1:8080",
                "127.0.0.1:40000",
                SynRecv,
                Established,
            ),
            ev(4_000, 3, "127.0.0.1:0", "127.0.0.1:9", Close, SynSent),
            ev(
                9_000,
                2,
                "127.0.0.1:8080",
                "127.0.0.1:40000",
                Established,
                CloseWait,
            ),
            ev(
                309_000,
                2,
                "127.0.0.1:8080",
                "127.0.0.1:40000",
                CloseWait,
                LastAck,
            ),
        ]
    }

    fn print(filter: Filter, json: bool, records: &[Vec<u8>], lost: u64) -> (String, Counts) {
        let mut p = Printer::new(
            Vec::new(),
            json,
            filter,
            Clock::with_offset(1_700_000_000_000_000_000),
            ResetReasons::default(),
        );
        for r in records {
            p.record(r);
        }
        p.lost(lost);
        assert!(!p.flush().unwrap());
        (String::from_utf8(p.out).unwrap(), p.counts)
    }

    #[test]
    fn the_printer_filters_tracks_and_marks_losses() {
        let records: Vec<Vec<u8>> = events()
            .iter()
            .map(|e| encode(e).to_bytes().to_vec())
            .chain([vec![0u8; 7]])
            .collect();
        let filter = Filter {
            states: vec![TcpState::CloseWait],
            ..Filter::default()
        };
        let (text, counts) = print(filter, false, &records, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format::TEXT_HEADER);
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].contains("ESTABLISHED -> CLOSE_WAIT") && lines[1].contains("0.006"));
        assert!(lines[2].contains("CLOSE_WAIT -> LAST_ACK") && lines[2].contains("0.300"));
        assert_eq!(lines[3], "-- 2 events lost (2 in all) --");
        assert_eq!((counts.shown, counts.undecodable, counts.lost), (2, 1, 2));
        assert_eq!(counts.by_kind[&Kind::State], 6);

        let ports = Filter {
            ports: vec![9],
            ..Filter::default()
        };
        let (json, _) = print(ports, true, &records, 0);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["remote"], "127.0.0.1:9");
    }

    /// `events --from` prints what the live stream printed for the same
    /// records, with the recording's clock and lost counter.
    #[test]
    fn replay_from_a_recording_filters_like_live() {
        let mut header = Header::this_host(
            "record",
            Clock::with_offset(1_700_000_000_000_000_000),
            &ResetReasons::default(),
            0,
        );
        header.lost_at_start = 5;
        let mut w = RecordingWriter::create(Vec::new(), &header)
            .unwrap()
            .with_block_records(2);
        let records: Vec<Vec<u8>> = events()
            .iter()
            .map(|e| encode(e).to_bytes().to_vec())
            .collect();
        for r in &records {
            w.push(r).unwrap();
        }
        w.set_lost(8);
        let bytes = w.finish(1_000_000).unwrap();
        let path = std::env::temp_dir().join(format!("tcptrace-events-{}.rec", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let mut rec = RecordingReader::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let filter = Filter {
            ports: vec![8080],
            netns: Some(7),
            ..Filter::default()
        };
        let mut p = Printer::new(
            Vec::new(),
            true,
            filter.clone(),
            rec.header().clock(),
            rec.header().reset_reasons(),
        );
        while let Some(b) = rec.next_block() {
            for r in b.records() {
                p.record(r);
            }
            p.lost(b.lost - 5);
        }
        p.lost(rec.lost() - 5);
        let replayed = String::from_utf8(p.out).unwrap();
        let (live, _) = print(filter, true, &records, 3);
        assert_eq!(replayed, live);
        assert_eq!(
            replayed.lines().count(),
            5 + 1,
            "5 events on :8080 and the loss"
        );
        assert!(replayed.ends_with("{\"kind\":\"lost\",\"count\":3,\"total\":3}\n"));
    }
}
