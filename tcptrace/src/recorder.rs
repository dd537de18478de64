//! `tcptrace record` (live tracing into a recording) and `tcptrace report`
//! (the per-port report of a recording, offline). The file format is in
//! [`crate::record`].

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::{RecordArgs, ReportArgs};
use crate::clock::Clock;
use crate::event;
use crate::record::{Header, RecordingReader, RecordingWriter, raw_matches, replay_report};
use crate::report::{self, Format};
use crate::session::MAX_TRACKED_SOCKETS;
use crate::signals::Shutdown;
use crate::track::Tracker;
use crate::watch::select_ports;

/// How often collected records are written out and synced when blocks do
/// not fill up sooner: at most this much is lost if the host goes down.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub async fn record(args: RecordArgs) -> Result<()> {
    // Filtered in the kernel where it can (and again below, for more ports
    // than the kernel filter holds).
    let crate::session::Tracing {
        tracer,
        reasons,
        clock,
        mut reader,
    } = crate::session::Tracing::start(&args.trace, args.netns, &args.ports)?;
    let mut shutdown = Shutdown::install()?;
    let path = &args.output;
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut header = Header::this_host("record", clock, &reasons, Clock::monotonic_now_ns());
    let lost_at_start = tracer.lost_events(0, true)?;
    header.lost_at_start = lost_at_start.total();
    header.ports.clone_from(&args.ports);
    header.netns = args.netns;
    let mut writer = RecordingWriter::create(file, &header)
        .with_context(|| format!("write {}", path.display()))?;
    eprintln!(
        "tcptrace: tracing {} into {}; Ctrl-C to stop",
        tracer.describe(),
        path.display()
    );

    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    flush_tick.tick().await;
    let (mut seen, mut lost) = (0u64, lost_at_start);
    let mut tracker = Tracker::new(MAX_TRACKED_SOCKETS);
    let outcome: io::Result<()> = loop {
        let (stopping, flush) = tokio::select! {
            () = reader.wait() => (deadline.is_some_and(|d| Instant::now() >= d), false),
            _ = flush_tick.tick() => (false, true),
            () = shutdown.recv() => (true, false),
        };
        let mut result = Ok(());
        reader.drain(|bytes| {
            seen += 1;
            // Tracked only to recognise the catcher's rare repeats, which
            // must not reach the file (Tracker::repeats).
            let repeat = event::decode(bytes).is_ok_and(|ev| tracker.observe(&ev).repeat);
            if result.is_ok() && !repeat && raw_matches(bytes, &args.ports, args.netns) {
                result = writer.push(bytes);
            }
        });
        let now_lost = tracer.lost_events(tracker.repeats, stopping)?;
        if now_lost.total() > lost.total() {
            eprintln!(
                "tcptrace: warning: {} events lost ({}), {} in all",
                now_lost.total() - lost.total(),
                now_lost.describe_since(lost),
                now_lost.total() - header.lost_at_start
            );
            lost = now_lost;
        }
        writer.set_lost(now_lost.total());
        if result.is_ok() && flush {
            result = sync(&mut writer, Clock::monotonic_now_ns());
        }
        if result.is_err() || stopping {
            break result;
        }
    };
    let written = writer.events() + u64::from(writer.pending());
    let lost = lost.total() - header.lost_at_start;
    let closed = outcome.and_then(|()| {
        let mut file = writer.finish(Clock::monotonic_now_ns())?;
        file.flush()?;
        file.sync_data()
    });
    match closed {
        Ok(()) => {
            eprintln!(
                "tcptrace: {written} events written to {} ({seen} seen), {lost} lost",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "write {}: recording stopped; the events in complete blocks before the error are readable ({lost} lost)",
                path.display()
            )
        }),
    }
}

/// Writes the collected records out as a block and makes them durable.
fn sync(writer: &mut RecordingWriter<File>, now_ns: u64) -> io::Result<()> {
    writer.flush_block(now_ns)?;
    writer.get_mut().sync_data()
}

pub fn report(args: &ReportArgs) -> Result<()> {
    let path = &args.file;
    let mut reader = open(path)?;
    let h = reader.header().clone();
    let mut report = replay_report(&mut reader);
    let account = reader.account();
    select_ports(&mut report.snapshot, &args.ports, None);
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let mut text = report::render(&report, format);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let clock = h.clock();
    eprintln!(
        "tcptrace: {}: {} on {} (Linux {}, tcptrace {}) from {}, {:.1}s",
        path.display(),
        h.source,
        h.hostname,
        h.kernel,
        h.tcptrace_version,
        clock.wall_ms(h.started_ns),
        report.interval_s
    );
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            return Err(e).context("write to stdout");
        }
        _ => {}
    }
    if !account.is_complete() {
        eprintln!(
            "tcptrace: warning: {}: the report covers what could be read: {account}",
            path.display()
        );
    }
    Ok(())
}

/// Opens a recording; the error is one line naming the file.
pub fn open(path: &Path) -> Result<RecordingReader<io::BufReader<File>>> {
    RecordingReader::open(path).with_context(|| path.display().to_string())
}
