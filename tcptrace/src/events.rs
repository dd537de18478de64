//! `tcptrace events`: every TCP event, one line each, as it happens.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::EventsArgs;
use crate::clock::Clock;
use crate::event::{self, Kind};
use crate::filter::Filter;
use crate::format;
use crate::loader::Tracer;
use crate::reader::Reader;
use crate::reasons::ResetReasons;
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
    let mut tracer = Tracer::load(args.trace.tracer_config())?;
    for w in &tracer.warnings {
        eprintln!("tcptrace: warning: {w}");
    }
    let reasons = ResetReasons::from_btf_file(&args.trace.btf).unwrap_or_else(|e| {
        eprintln!("tcptrace: warning: reset reasons will print as numbers: {e:#}");
        ResetReasons::default()
    });
    let clock = Clock::now();
    let mut reader = Reader::new(tracer.take_rings(), args.trace.poll_interval)?;
    let mut shutdown = Shutdown::install()?;
    let hooks: Vec<String> = tracer
        .attached
        .iter()
        .map(|(n, how)| format!("{how}/{n}"))
        .collect();
    eprintln!("tcptrace: tracing {}; Ctrl-C to stop", hooks.join(", "));

    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    if !args.json {
        writeln!(out, "{}", format::TEXT_HEADER)?;
    }
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut tracker = Tracker::new(MAX_TRACKED_SOCKETS);
    let mut counts = Counts::default();
    let mut io_result = Ok(());
    loop {
        let stopping = tokio::select! {
            () = reader.wait() => deadline.is_some_and(|d| Instant::now() >= d),
            () = shutdown.recv() => true,
        };
        reader.drain(|bytes| {
            let ev = match event::decode(bytes) {
                Ok(ev) => ev,
                Err(e) => {
                    counts.undecodable += 1;
                    log::debug!("undecodable record: {e}");
                    return;
                }
            };
            *counts.by_kind.entry(ev.kind()).or_default() += 1;
            let note = tracker.observe(&ev);
            if io_result.is_ok() && filter.matches(&ev, &note) {
                counts.shown += 1;
                let line = if args.json {
                    format::json_line(&ev, &note, clock, &reasons)
                } else {
                    format::text_line(&ev, &note, clock, &reasons)
                };
                io_result = writeln!(out, "{line}");
            }
        });
        let lost = tracer.lost_events()?;
        if lost > counts.lost {
            let new = lost - counts.lost;
            counts.lost = lost;
            eprintln!(
                "tcptrace: warning: {new} events lost (ring buffer full, {lost} in all): raise --ring-size"
            );
            io_result = io_result.and_then(|()| {
                if args.json {
                    writeln!(out, r#"{{"kind":"lost","count":{new},"total":{lost}}}"#)
                } else {
                    writeln!(out, "-- {new} events lost ({lost} in all) --")
                }
            });
        }
        io_result = io_result.and_then(|()| out.flush());
        if let Err(e) = &io_result {
            if e.kind() == io::ErrorKind::BrokenPipe {
                break; // the reader of our output went away (`| head`)
            }
            return Err(io::Error::new(e.kind(), e.to_string())).context("write events");
        }
        if stopping {
            break;
        }
    }
    eprintln!("tcptrace: {}", counts.summary(tracker.untracked));
    Ok(())
}
