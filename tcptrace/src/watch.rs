//! `tcptrace watch`: the live per-port view. On a terminal, full screen
//! (`view::tui`); otherwise, or with `--once`, a plain table or JSON.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::spawn_blocking;

use crate::aggregate::AggregatorConfig;
use crate::census::{self, NetnsCensus};
use crate::cli::WatchArgs;
use crate::clock::Clock;
use crate::session::{self, Session};
use crate::signals::Shutdown;
use crate::snapshot::{Direction, Snapshot};
use crate::view::TableOptions;
use crate::view::table::render_table;
use crate::view::tui::{App, run_tui};

/// A census result and the monotonic time its dump began.
pub type CensusResult = (u64, Result<Vec<NetnsCensus>>);

pub async fn run(args: WatchArgs) -> Result<()> {
    let cfg = AggregatorConfig {
        max_ports: args.max_ports,
        synack_retries: args.synack_retries.unwrap_or_else(session::synack_retries),
        netns: args.netns,
        ephemeral: session::ephemeral_ports(),
        ..AggregatorConfig::default()
    };
    let mut session = Session::start(&args.trace, cfg, &args.ports)?;
    session.set_findings(&crate::findings::FindingsConfig::default());
    // Sockets that predate tracing: counted, with "at least" ages.
    let (started, first) = take_census(args.netns).await;
    match first {
        Ok(c) => session.seed(&c, started),
        Err(e) => eprintln!(
            "tcptrace: warning: no socket census, pre-existing sockets are not shown: {e:#}"
        ),
    }
    let census_rx = spawn_census(args.netns, args.census_interval);
    let shutdown = Shutdown::install()?;
    let tui = io::stdout().is_terminal() && args.once.is_none() && !args.json;
    if !tui {
        let when = args.once.map_or_else(
            || format!("a report every {:?}", args.interval),
            |d| format!("one report after {d:?}"),
        );
        eprintln!("tcptrace: tracing {}; {when}", session.tracer.describe());
    }
    if tui {
        run_live(&mut session, &args, census_rx, shutdown).await
    } else {
        run_plain(&mut session, &args, census_rx, shutdown).await
    }
}

/// One census of every namespace (or just `only`), off the async threads.
pub async fn take_census(only: Option<u32>) -> CensusResult {
    let started = Clock::monotonic_now_ns();
    let result = spawn_blocking(move || census::dump_all(only))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("census task: {e}")));
    (started, result)
}

/// Takes a census every `every` and sends it.
pub fn spawn_census(only: Option<u32>, every: Duration) -> mpsc::Receiver<CensusResult> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.send(take_census(only).await).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Applies a census result; a failed census is logged, not fatal.
pub fn apply_census(session: &mut Session, (started, result): CensusResult) {
    match result {
        Ok(c) => session.apply_census(&c, started),
        Err(e) => log::warn!("socket census failed: {e:#}"),
    }
}

/// Keeps the rows the user asked for, and the findings about them (and the
/// host-wide ones).
pub fn select_ports(snap: &mut Snapshot, ports: &[u16], direction: Option<Direction>) {
    let wanted = |port: Option<u16>, dir: Direction| {
        (ports.is_empty() || port.is_some_and(|n| ports.contains(&n)))
            && direction.is_none_or(|d| d == dir)
    };
    snap.ports.retain(|p| wanted(p.port, p.direction));
    snap.findings
        .retain(|f| f.direction.is_none_or(|d| wanted(f.port, d)));
}

/// The full-screen view: the session feeds a snapshot every interval to
/// `view::tui`, which owns the terminal until the user quits.
async fn run_live(
    session: &mut Session,
    args: &WatchArgs,
    mut census_rx: mpsc::Receiver<CensusResult>,
    mut shutdown: Shutdown,
) -> Result<()> {
    let opts = TableOptions {
        ports: args.ports.clone(),
        direction: args.direction.map(Direction::from),
        ..TableOptions::default()
    };
    let (tx, rx) = mpsc::channel(2);
    let feed = async {
        let mut ticker = tokio::time::interval(args.interval);
        loop {
            tokio::select! {
                () = session.reader.wait() => { session.drain()?; }
                _ = ticker.tick() => {
                    session.drain()?;
                    if tx.send(session.snapshot()).await.is_err() {
                        return Ok(());
                    }
                }
                Some(census) = census_rx.recv() => apply_census(session, census),
            }
        }
    };
    tokio::select! {
        r = feed => r,
        r = run_tui(App::new(opts), rx, shutdown.recv()) => r,
    }
}

async fn run_plain(
    session: &mut Session,
    args: &WatchArgs,
    mut census_rx: mpsc::Receiver<CensusResult>,
    mut shutdown: Shutdown,
) -> Result<()> {
    let direction = args.direction.map(Direction::from);
    let deadline = args
        .once
        .map(|d| tokio::time::Instant::from_std(Instant::now() + d));
    let mut ticker = tokio::time::interval(args.interval);
    ticker.tick().await; // the first tick is immediate
    let mut prev: Option<Snapshot> = None;
    let mut out = io::stdout().lock();
    loop {
        tokio::select! {
            () = session.reader.wait() => { session.drain()?; }
            _ = ticker.tick(), if deadline.is_none() => {
                session.drain()?;
                let mut snap = session.snapshot();
                select_ports(&mut snap, &args.ports, direction);
                if emit(&mut out, &snap, prev.as_ref(), args)? {
                    return Ok(());
                }
                prev = Some(snap);
            }
            Some(census) = census_rx.recv() => apply_census(session, census),
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                // A fresh census, so TIME_WAIT and accept queues are current.
                let census = take_census(args.netns).await;
                session.drain()?;
                apply_census(session, census);
                let mut snap = session.snapshot();
                select_ports(&mut snap, &args.ports, direction);
                emit(&mut out, &snap, None, args)?;
                return Ok(());
            }
            () = shutdown.recv() => return Ok(()),
        }
    }
}

/// Prints one snapshot; true if stdout is gone (`| head`).
fn emit(
    out: &mut impl Write,
    snap: &Snapshot,
    prev: Option<&Snapshot>,
    args: &WatchArgs,
) -> Result<bool> {
    let text = if args.json {
        serde_json::to_string(snap).context("serialise snapshot")?
    } else {
        let opts = TableOptions {
            ports: args.ports.clone(),
            direction: args.direction.map(Direction::from),
            ..TableOptions::default()
        };
        render_table(snap, prev, &opts)
    };
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("write to stdout"),
    }
}
