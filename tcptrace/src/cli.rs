//! Command-line interface: flags are parsed here, then validated into the typed
//! settings the commands take.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::loader::{HookMode, TracerConfig};
use crate::tcp::TcpState;

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version,
    about = "Trace the kernel's TCP state machine: dwell times, SYN-ACK retransmits and resets, per port"
)]
pub struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace);
    /// default warn, info for the daemon.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<log::LevelFilter>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live per-port view: sockets in each state now, dwell times, SYN-ACK
    /// retransmits, resets and their causes. Full-screen on a terminal; a
    /// plain table (or JSON) otherwise or with --once.
    Watch(WatchArgs),
    /// Run for the long haul: a per-port report every interval, and a
    /// Prometheus endpoint (/metrics, /healthz). Foreground, systemd-friendly.
    /// Signals: TERM/INT final report and exit, HUP reopen --output, USR1
    /// report now.
    Daemon(DaemonArgs),
    /// Stream every TCP event: state changes with time in the old state,
    /// SYN-ACK retransmits, retransmits and resets with their cause.
    Events(EventsArgs),
    /// Record every TCP event to a file, for `report` and `events --from`
    /// later, anywhere, without root.
    Record(RecordArgs),
    /// The per-port report of a recording (from `record` or the daemon's
    /// flight recorder), offline: no root, no BPF.
    Report(ReportArgs),
    /// List the host's TCP sockets now with their state, time in state, service
    /// port, owning process and queues; ages come from a running tcptrace daemon.
    Sockets(SocketsArgs),
}

/// Settings of the kernel side, shared by every tracing command.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Ring buffer size (power of two, e.g. 4M, 16MiB, 65536).
    #[arg(long, default_value = "4M", value_parser = parse_ring_size, value_name = "BYTES")]
    pub ring_size: u32,
    /// Tracepoint flavour: BTF-typed with fallback (auto), BTF only, or classic.
    #[arg(long, value_enum, default_value_t = HookMode::Auto)]
    pub hooks: HookMode,
    /// How often the ring buffer is drained when no wake-up arrives.
    #[arg(long, default_value = "10ms", value_parser = parse_duration, value_name = "DURATION")]
    pub poll_interval: Duration,
    /// Ring buffers (1-4) [default: one per CPU, up to 4]; CPU c writes to
    /// ring c % N. More than one spares the CPUs contention on one ring's
    /// lock, at the cost of merging by time.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4), value_name = "N")]
    pub rings: Option<u32>,
    /// BTF file to read reset-reason names from.
    #[arg(
        long,
        default_value = "/sys/kernel/btf/vmlinux",
        value_name = "PATH",
        hide = true
    )]
    pub btf: PathBuf,
}

impl TraceArgs {
    pub fn tracer_config(&self) -> TracerConfig {
        TracerConfig {
            ring_bytes: self.ring_size,
            // Wake the reader early once a quarter of the ring waits unread.
            wakeup_bytes: u64::from(self.ring_size / 4),
            hooks: self.hooks,
            rings: self.rings.unwrap_or_else(crate::loader::default_rings),
            ..TracerConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only events with this port on either side (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only events whose old or new state is this one (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", short = 's', value_name = "STATE")]
    pub states: Vec<TcpState>,
    /// Only IPv4.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Only this network namespace (inode, as in `ls -l /proc/PID/ns/net`).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Replay a recording instead of tracing (no root needed).
    #[arg(long, value_name = "FILE", conflicts_with = "duration")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// `tcptrace record`: the filters reduce what is written.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording to write (created, or truncated if it exists).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Only events with this port on either side (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only this network namespace (inode, as in `ls -l /proc/PID/ns/net`).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A recording made by `tcptrace record` or the daemon's flight recorder.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// One JSON object (the daemon's report format) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only these ports' rows (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<u16>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only these ports (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only inbound (listening ports) or outbound (ports we connect to).
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Refresh interval.
    #[arg(long, short = 'i', default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Trace for DURATION, print one report and exit (plain text, or JSON with --json).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub once: Option<Duration>,
    /// Print snapshots as JSON (one object per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this network namespace (inode, as in `ls -l /proc/PID/ns/net`).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,
    /// Distinct (port, direction) rows before the rest fold into "other".
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_ports: usize,
    /// SYN-ACK retransmits after which an incomplete handshake counts as
    /// failed; default: this host's net.ipv4.tcp_synack_retries.
    #[arg(long, value_name = "N")]
    pub synack_retries: Option<u32>,
    /// How often sock_diag is asked for TIME_WAIT, orphaned FIN_WAIT2 and
    /// accept queues, which tracepoints never show.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub census_interval: Duration,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Daemon flags. Each overrides the same key of `--config`; unset ones take
/// the file's value or the default shown.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// TOML file with any of the keys below (interval = "60s", listen = "...", ...).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Time between reports [default: 60s].
    #[arg(long, short = 'i', value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Option<Duration>,
    /// Report format [default: text].
    #[arg(long, value_enum)]
    pub format: Option<crate::report::Format>,
    /// Append reports to FILE (flushed and fsynced each time; reopened on
    /// SIGHUP for log rotation) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Address of the Prometheus endpoint [default: 127.0.0.1:9911]. Any other
    /// address, e.g. 0.0.0.0:9911, must be given explicitly.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Once attached, drop to this user and give up every capability.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Only these ports in reports and metrics (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only this network namespace (inode).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,
    /// Distinct (port, direction) rows before the rest fold into "other" [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_ports: Option<usize>,
    /// SYN-ACK retransmits that make an incomplete handshake a failure
    /// [default: net.ipv4.tcp_synack_retries].
    #[arg(long, value_name = "N")]
    pub synack_retries: Option<u32>,
    /// How often sock_diag is asked for TIME_WAIT and accept queues [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub census_interval: Option<Duration>,
    /// Ring buffer size, a power of two [default: 4M].
    #[arg(long, value_parser = parse_ring_size, value_name = "BYTES")]
    pub ring_size: Option<u32>,
    /// Tracepoint flavour [default: auto].
    #[arg(long, value_enum)]
    pub hooks: Option<HookMode>,
    /// Ring buffers, 1-4 [default: one per CPU, up to 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4), value_name = "N")]
    pub rings: Option<u32>,
    /// Drain interval of the ring buffer [default: 10ms].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub poll_interval: Option<Duration>,
    #[command(flatten)]
    pub flight: crate::flight::FlightArgs,
}

#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// Only sockets of this port (service port or either side; repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only sockets in this state (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", short = 's', value_name = "STATE")]
    pub states: Vec<TcpState>,
    /// Only sockets known to have been in their state at least this long.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub older_than: Option<Duration>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only this network namespace (inode); default: all (own only without root).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,
    /// The tcptrace daemon whose tracking gives exact ages.
    #[arg(long, default_value = "127.0.0.1:9911", value_name = "ADDR")]
    pub daemon: std::net::SocketAddr,
    /// Do not ask a daemon: ages only for TIME_WAIT and orphaned FIN_WAIT2.
    #[arg(long)]
    pub no_daemon: bool,
}

/// `--direction` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    In,
    Out,
}

impl From<DirectionArg> for crate::snapshot::Direction {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::In => Self::In,
            DirectionArg::Out => Self::Out,
        }
    }
}

/// Parses `4M`, `4MiB`, `16m`, `65536`: a power of two of at least one page.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 4M or 65536"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("'{s}': unknown size unit '{unit}' (use K, M or G)")),
    };
    let bytes = n
        .checked_mul(mult)
        .filter(|b| *b <= 1 << 30)
        .ok_or(format!("'{s}' is larger than 1G"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!(
            "'{s}' must be a power of two of at least 4K (the kernel's rule for ring buffers)"
        ));
    }
    Ok(bytes as u32)
}

/// Parses `10ms`, `1.5s`, `5m`, `2h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"));
    }
    let d: jiff::SignedDuration = t
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 500ms, 30s, 5m or 1h"))?;
    Duration::try_from(d).map_err(|_| format!("'{s}' must not be negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert_eq!(parse_ring_size("64k"), Ok(65536));
        assert!(parse_ring_size("3M").unwrap_err().contains("power of two"));
        assert!(parse_ring_size("1024").unwrap_err().contains("at least 4K"));
        assert!(
            parse_ring_size("4X")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(
            parse_ring_size("4G")
                .unwrap_err()
                .contains("larger than 1G")
        );
        assert!(parse_ring_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_parses_events_filters() {
        let cli = Cli::try_parse_from([
            "tcptrace",
            "events",
            "--json",
            "--port",
            "80",
            "-p",
            "443",
            "--state",
            "close_wait",
            "-6",
        ])
        .unwrap();
        let Command::Events(a) = cli.command else {
            panic!("events")
        };
        assert!(a.json && a.ipv6 && !a.ipv4);
        assert_eq!(a.ports, [80, 443]);
        assert_eq!(a.states, [TcpState::CloseWait]);
        assert!(Cli::try_parse_from(["tcptrace", "events", "-4", "-6"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "events", "--state", "bogus"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "events", "--port", "70000"]).is_err());
    }

    #[test]
    fn cli_parses_watch() {
        let cli = Cli::try_parse_from(["tcptrace", "watch"]).unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("watch")
        };
        assert_eq!(
            (w.interval, w.once, w.max_ports, w.json),
            (Duration::from_secs(1), None, 4096, false)
        );
        let cli = Cli::try_parse_from([
            "tcptrace",
            "watch",
            "--once",
            "5s",
            "--json",
            "-p",
            "8080",
            "--direction",
            "in",
            "-i",
            "250ms",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("watch")
        };
        assert_eq!(w.once, Some(Duration::from_secs(5)));
        assert_eq!((w.ports, w.direction), (vec![8080], Some(DirectionArg::In)));
        assert_eq!(w.interval, Duration::from_millis(250));
        assert!(Cli::try_parse_from(["tcptrace", "watch", "--direction", "sideways"]).is_err());
    }
}
