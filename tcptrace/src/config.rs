//! The daemon's settings: flags, an optional TOML file (`--config`), and the
//! defaults, resolved in that order of precedence into one typed value. A bad
//! file is one line naming the file, line and key, and exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::cli::{DaemonArgs, TraceArgs, parse_duration, parse_ring_size};
use crate::findings::FindingsConfig;
use crate::loader::HookMode;
use crate::report::Format;

/// A configuration error: printed as one line, exit code 2 (like a bad flag).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The TOML file: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    pub format: Option<Format>,
    pub output: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub user: Option<String>,
    pub ports: Option<Vec<u16>>,
    pub netns: Option<u32>,
    pub max_ports: Option<usize>,
    pub synack_retries: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub census_interval: Option<Duration>,
    #[serde(default, deserialize_with = "ring_size")]
    pub ring_size: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub poll_interval: Option<Duration>,
    pub rings: Option<u32>,
    pub hooks: Option<HookModeName>,
    pub log_level: Option<String>,
    /// The `[findings]` table: thresholds of the rules (keys as in
    /// [`FindingsConfig`], each optional; unknown keys are rejected).
    pub findings: Option<FindingsConfig>,
}

/// `hooks = "auto" | "btf" | "classic"`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookModeName {
    Auto,
    Btf,
    Classic,
}

impl From<HookModeName> for HookMode {
    fn from(h: HookModeName) -> Self {
        match h {
            HookModeName::Auto => HookMode::Auto,
            HookModeName::Btf => HookMode::Btf,
            HookModeName::Classic => HookMode::Classic,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn ring_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let text = match Size::deserialize(d)? {
        Size::Bytes(n) => n.to_string(),
        Size::Text(s) => s,
    };
    parse_ring_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("config {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|msg| ConfigError(format!("config {}: {msg}", path.display())))
    }

    /// Parses TOML text; the error is one line: `line N (`key = value`): why`.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let why = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!("line {line_no} (`{line}`): {why}")
                }
                None => why,
            }
        })
    }
}

/// Everything the daemon runs with.
#[derive(Debug)]
pub struct DaemonConfig {
    pub interval: Duration,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub listen: SocketAddr,
    pub user: Option<String>,
    pub ports: Vec<u16>,
    pub netns: Option<u32>,
    pub max_ports: usize,
    pub synack_retries: Option<u32>,
    pub census_interval: Duration,
    pub trace: TraceArgs,
    pub log_level: log::LevelFilter,
    pub findings: FindingsConfig,
}

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9911,
));

impl DaemonConfig {
    /// Flags win over the file, the file over the defaults.
    pub fn resolve(
        args: DaemonArgs,
        file: FileConfig,
        cli_log_level: Option<log::LevelFilter>,
    ) -> Result<Self, ConfigError> {
        let log_level = match (cli_log_level, &file.log_level) {
            (Some(l), _) => l,
            (None, Some(name)) => name.parse().map_err(|_| {
                ConfigError(format!(
                    "config: log_level: unknown level '{name}' (error, warn, info, debug, trace)"
                ))
            })?,
            (None, None) => log::LevelFilter::Info,
        };
        let interval = args
            .interval
            .or(file.interval)
            .unwrap_or(Duration::from_mins(1));
        if interval.is_zero() {
            return Err(ConfigError("interval must be longer than 0".into()));
        }
        let findings = file.findings.unwrap_or_default();
        findings
            .validate()
            .map_err(|e| ConfigError(format!("config: findings: {e}")))?;
        Ok(Self {
            interval,
            format: args.format.or(file.format).unwrap_or_default(),
            output: args.output.or(file.output),
            listen: args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN),
            user: args.user.or(file.user),
            ports: if args.ports.is_empty() {
                file.ports.unwrap_or_default()
            } else {
                args.ports
            },
            netns: args.netns.or(file.netns),
            max_ports: args.max_ports.or(file.max_ports).unwrap_or(4096),
            synack_retries: args.synack_retries.or(file.synack_retries),
            census_interval: args
                .census_interval
                .or(file.census_interval)
                .unwrap_or(Duration::from_secs(10)),
            trace: TraceArgs {
                ring_size: args.ring_size.or(file.ring_size).unwrap_or(4 << 20),
                hooks: args
                    .hooks
                    .or(file.hooks.map(HookMode::from))
                    .unwrap_or_default(),
                poll_interval: args
                    .poll_interval
                    .or(file.poll_interval)
                    .unwrap_or(crate::reader::DEFAULT_POLL),
                rings: match args.rings.or(file.rings) {
                    None => None,
                    Some(n @ 1..=4) => Some(n),
                    Some(n) => {
                        return Err(ConfigError(format!("config: rings: {n} is not in 1..=4")));
                    }
                },
                btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            },
            log_level,
            findings,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn daemon_args(argv: &[&str]) -> DaemonArgs {
        let mut full = vec!["tcptrace", "daemon"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Daemon(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_file_and_flags_in_order_of_precedence() {
        let file = FileConfig::parse(
            "interval = \"30s\"\nformat = \"json\"\nlisten = \"0.0.0.0:9100\"\nports = [80, 443]\nring_size = \"16M\"\nhooks = \"classic\"\n",
        )
        .unwrap();
        let c = DaemonConfig::resolve(daemon_args(&["--interval", "5s"]), file, None).unwrap();
        assert_eq!(c.interval, Duration::from_secs(5), "the flag wins");
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.listen, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(c.ports, [80, 443]);
        assert_eq!(c.trace.ring_size, 16 << 20);
        assert_eq!(c.trace.hooks, HookMode::Classic);
        let d = DaemonConfig::resolve(daemon_args(&[]), FileConfig::default(), None).unwrap();
        assert_eq!(
            (d.interval, d.format, d.listen.to_string()),
            (
                Duration::from_mins(1),
                Format::Text,
                DEFAULT_LISTEN.to_string()
            )
        );
        assert_eq!(d.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn findings_table_overrides_some_thresholds() {
        let file = FileConfig::parse(
            "interval = \"30s\"\n[findings]\nclose_wait_count = 50\nclose_wait_age_s = 300\nrefused_per_s = 0.5\n",
        )
        .unwrap();
        let c = DaemonConfig::resolve(daemon_args(&[]), file, None).unwrap();
        assert_eq!(c.findings.close_wait_count, 50);
        assert!((c.findings.close_wait_age_s - 300.0).abs() < f64::EPSILON);
        assert!((c.findings.refused_per_s - 0.5).abs() < f64::EPSILON);
        // The rest keep their defaults.
        assert_eq!(
            FindingsConfig {
                close_wait_count: 50,
                close_wait_age_s: 300.0,
                refused_per_s: 0.5,
                ..FindingsConfig::default()
            },
            c.findings
        );
        let d = DaemonConfig::resolve(daemon_args(&[]), FileConfig::default(), None).unwrap();
        assert_eq!(d.findings, FindingsConfig::default());
    }

    #[test]
    fn bad_files_name_the_line_and_key() {
        assert_eq!(
            FileConfig::parse("interval = \"60s\"\nintervl = \"5s\"\n")
                .unwrap_err()
                .split(": unknown field")
                .next()
                .unwrap(),
            "line 2 (`intervl = \"5s\"`)"
        );
        let e = FileConfig::parse("interval = \"soon\"\n").unwrap_err();
        assert!(
            e.starts_with("line 1 (`interval = \"soon\"`): 'soon' is not a duration"),
            "{e}"
        );
        let e = FileConfig::parse("ring_size = 3000\n").unwrap_err();
        assert!(
            e.contains("ring_size = 3000") && e.contains("power of two"),
            "{e}"
        );
        let e = FileConfig::parse("listen = \"localhost\"\n").unwrap_err();
        assert!(e.starts_with("line 1 (`listen = \"localhost\"`)"), "{e}");
        let e = FileConfig::parse("format = \"xml\"\n").unwrap_err();
        assert!(
            e.contains("format = \"xml\"") && e.contains("unknown variant"),
            "{e}"
        );
        assert!(
            !FileConfig::parse("ports = [80,\n")
                .unwrap_err()
                .contains('\n')
        );
        let e = FileConfig::parse("[findings]\nclose_wait_count = 5\nclose_wiat_age_s = 1\n")
            .unwrap_err();
        assert!(
            e.starts_with("line 3 (`close_wiat_age_s = 1`): unknown field `close_wiat_age_s`"),
            "{e}"
        );
        let negative = DaemonConfig::resolve(
            daemon_args(&[]),
            FileConfig::parse("[findings]\nsyn_sent_age_s = -1").unwrap(),
            None,
        );
        assert_eq!(
            negative.unwrap_err().0,
            "config: findings: syn_sent_age_s must be a number >= 0, not -1"
        );
        let lvl = DaemonConfig::resolve(
            daemon_args(&[]),
            FileConfig::parse("log_level = \"loud\"").unwrap(),
            None,
        );
        assert!(
            lvl.unwrap_err()
                .0
                .contains("log_level: unknown level 'loud'")
        );
    }
}
