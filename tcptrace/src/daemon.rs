//! `tcptrace daemon`: weeks of tracing on a production host. A per-port report
//! every interval (text or JSON lines, to stdout or an append-only file), a
//! Prometheus endpoint, signals for log rotation and on-demand reports, and
//! privileges dropped once attached.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::aggregate::AggregatorConfig;
use crate::cli::DaemonArgs;
use crate::config::{DaemonConfig, FileConfig};
use crate::report::{self, Report};
use crate::session::{self, Session};
use crate::signals::Shutdown;
use crate::snapshot::Snapshot;
use crate::watch::{apply_census, select_ports, spawn_census, take_census};

/// How often /metrics sees a fresh snapshot.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// `log_level`: the `--log-level` flag if given; it wins over the config file.
pub async fn run(args: DaemonArgs, log_level: Option<log::LevelFilter>) -> Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flight_args = args.flight.clone().checked()?;
    let cfg = DaemonConfig::resolve(args, file, log_level)?;
    // Handlers first: a SIGHUP from logrotate (or any of these) while the
    // programs load must not kill the daemon with the signal's default action.
    let mut shutdown = Shutdown::install()?;
    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("install SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("install SIGUSR2 handler")?;
    log::set_max_level(cfg.log_level);
    let agg_cfg = AggregatorConfig {
        max_ports: cfg.max_ports,
        synack_retries: cfg.synack_retries.unwrap_or_else(session::synack_retries),
        netns: cfg.netns,
        ephemeral: session::ephemeral_ports(),
        ..AggregatorConfig::default()
    };
    let mut session = Session::start(&cfg.trace, agg_cfg, &cfg.ports)?;
    session.set_findings(&cfg.findings);
    session.start_intervals();
    session.flight = crate::flight::FlightRecorder::from_daemon(&flight_args, &cfg);
    let (started, first) = take_census(cfg.netns).await;
    match first {
        Ok(c) => session.seed(&c, started),
        Err(e) => log::warn!("no socket census, pre-existing sockets are not counted: {e:#}"),
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {} for /metrics", cfg.listen))?;
    let mut sink = Sink::open(cfg.output.clone())?;
    let census_only = drop_privileges(&cfg)?;
    log::info!(
        "tracing {}; reports every {:?} to {}; metrics on http://{}/metrics",
        session.tracer.describe(),
        cfg.interval,
        cfg.output
            .as_ref()
            .map_or_else(|| "stdout".to_string(), |p| p.display().to_string()),
        cfg.listen
    );

    let (publish, latest) = watch::channel(Arc::new(Snapshot::default()));
    let (sockets_tx, mut sockets_rx) =
        tokio::sync::mpsc::channel::<crate::metrics::SocketsRequest>(4);
    let (http, stop_http) = spawn_http(listener, latest, sockets_tx);
    let mut census_rx = spawn_census(census_only, cfg.census_interval);
    let mut reports = tokio::time::interval(cfg.interval);
    reports.tick().await;
    let mut metrics_tick = tokio::time::interval(METRICS_REFRESH);

    loop {
        tokio::select! {
            () = session.reader.wait() => { session.drain()?; }
            _ = metrics_tick.tick() => {
                session.drain()?;
                let mut snap = session.snapshot();
                crate::flight::check(&mut session, &snap);
                select_ports(&mut snap, &cfg.ports, None);
                publish.send_replace(Arc::new(snap));
            }
            _ = reports.tick() => write_report(&mut session, &mut sink, &cfg, "interval")?,
            _ = usr1.recv() => {
                log::info!("SIGUSR1: report now");
                write_report(&mut session, &mut sink, &cfg, "interval")?;
            }
            _ = usr2.recv() => crate::flight::dump(&mut session, "sigusr2", "SIGUSR2"),
            _ = hup.recv() => {
                log::info!("SIGHUP: reopening the output");
                // Keep writing to the old file rather than stop tracing.
                if let Err(e) = sink.reopen() {
                    log::error!("reopening the output failed, still writing to the old file: {e:#}");
                }
            }
            Some(census) = census_rx.recv() => apply_census(&mut session, census),
            Some(reply) = sockets_rx.recv() => {
                session.drain()?;
                let _ = reply.send(Arc::new(session.known_sockets()));
            }
            () = shutdown.recv() => break,
        }
    }
    log::info!("stopping: final report");
    write_report(&mut session, &mut sink, &cfg, "final")?;
    stop_http.notify_one();
    match http.await {
        Ok(r) => r.context("metrics endpoint")?,
        Err(e) => log::warn!("metrics endpoint task: {e}"),
    }
    drop(session);
    log::info!("programs detached");
    Ok(())
}

/// Serves /metrics, /healthz and /sockets until the returned `Notify` fires.
fn spawn_http(
    listener: tokio::net::TcpListener,
    latest: watch::Receiver<Arc<Snapshot>>,
    sockets: tokio::sync::mpsc::Sender<crate::metrics::SocketsRequest>,
) -> (tokio::task::JoinHandle<Result<()>>, Arc<Notify>) {
    let stop_http = Arc::new(Notify::new());
    let stop = stop_http.clone();
    let http = tokio::spawn(async move {
        let shutdown = async move { stop.notified().await };
        crate::metrics::serve_with_sockets(listener, latest, sockets, shutdown).await
    });
    (http, stop_http)
}

/// With `--user`: switches user and gives up every capability. Returns the
/// namespace the census may still cover (entering others needs
/// CAP_SYS_ADMIN, which is gone).
fn drop_privileges(cfg: &DaemonConfig) -> Result<Option<u32>> {
    let Some(user) = &cfg.user else {
        return Ok(cfg.netns);
    };
    crate::privileges::drop_to(user)?;
    log::info!("running as {user} with no capabilities");
    if cfg.netns.is_some() {
        return Ok(cfg.netns);
    }
    let own = crate::census::netns_inode("/proc/self/ns/net".as_ref()).context("own netns")?;
    log::info!("the socket census now covers this daemon's network namespace only");
    Ok(Some(own))
}

fn write_report(
    session: &mut Session,
    sink: &mut Sink,
    cfg: &DaemonConfig,
    kind: &str,
) -> Result<()> {
    session.drain()?;
    let Some((mut snapshot, interval_s)) = session.end_interval() else {
        return Ok(());
    };
    select_ports(&mut snapshot, &cfg.ports, None);
    let report = Report {
        report: kind.to_string(),
        interval_s,
        snapshot,
    };
    let mut text = report::render(&report, cfg.format);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    sink.write(&text)
}

/// Where reports go: stdout, or a file opened for appending.
struct Sink {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl Sink {
    fn open(path: Option<PathBuf>) -> Result<Self> {
        let file = path.as_ref().map(open_append).transpose()?;
        Ok(Self { path, file })
    }

    /// After logrotate moved the file away: continue in a new one at the path.
    fn reopen(&mut self) -> Result<()> {
        if let Some(p) = &self.path {
            self.file = Some(open_append(p)?);
        }
        Ok(())
    }

    /// Writes, flushes and fsyncs one report, so a crash loses at most the
    /// report being written.
    fn write(&mut self, text: &str) -> Result<()> {
        if let Some(f) = &mut self.file {
            f.write_all(text.as_bytes()).context("write report")?;
            match f.sync_data() {
                // A pipe, FIFO or /dev/null cannot be synced (EINVAL): nothing to make durable.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                other => other.context("fsync report"),
            }
        } else {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("write report to stdout")
        }
    }
}

fn open_append(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {} for appending", path.display()))
}
