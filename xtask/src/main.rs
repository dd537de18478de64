//! Chores for tcptrace: `setup` installs the build and test dependencies, `run`
//! builds a release binary and runs it, `test` runs every check CI runs.

use std::env;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tcptrace chores")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the build and the tests need (apt-get, as root).
    Setup,
    /// Build a release binary and run it, e.g. `cargo xtask run -- watch`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, run the unit tests and the kernel tests as root.
    Test {
        /// Run only the kernel tests whose names contain this.
        filter: Option<String>,
    },
}

/// Debian packages: clang-19 and libbpf-dev build the BPF programs, bpftool links
/// them (and shows attached programs in tests); nftables provokes SYN-ACK
/// retransmits in the kernel tests; iproute2 makes their network namespaces;
/// prometheus is the real server the daemon tests scrape with, and promtool
/// checks the exposition; tmux drives the full-screen view in its test.
const PACKAGES: &[(&str, &str)] = &[
    ("clang-19", "/usr/bin/clang-19"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("nftables", "/usr/sbin/nft"),
    ("iproute2", "/usr/bin/ip"),
    ("prometheus", "/usr/bin/promtool"),
    ("tmux", "/usr/bin/tmux"),
];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Run { args } => {
            setup()?;
            cargo(&["build", "--release", "--package", "tcptrace"])?;
            let bin = workspace().join("target/release/tcptrace");
            exec_as_root(&bin, &args)
        }
        Cmd::Test { filter } => test(filter.as_deref()),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, path)| !PathBuf::from(path).exists())
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        let is_debian = PathBuf::from("/usr/bin/apt-get").exists();
        if !is_debian {
            bail!(
                "missing build dependencies {missing:?}; install clang (>= 15), libbpf headers, \
                 bpftool, nftables and iproute2 with your package manager"
            );
        }
        eprintln!("xtask: installing {}", missing.join(" "));
        sh(privileged("apt-get").args(["update", "-q"])).context("apt-get update")?;
        sh(privileged("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    }
    mount_tracefs();
    Ok(())
}

/// Classic tracepoints are attached by id, read from tracefs.
fn mount_tracefs() {
    if !PathBuf::from("/sys/kernel/tracing/events").exists() && is_root() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
}

fn test(filter: Option<&str>) -> Result<()> {
    setup()?;
    cargo(&["fmt", "--all", "--check"]).context("cargo fmt --check (run `cargo fmt`)")?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Unit tests, no root needed.
    cargo(&["test", "--workspace", "--lib", "--bins"])?;
    // Kernel tests: load the real programs, drive real sockets in private
    // network namespaces. They need root.
    let mut args = vec![
        "test",
        "--package",
        "tcptrace",
        "--tests",
        "--",
        "--include-ignored",
    ];
    if let Some(f) = filter {
        args.push(f);
    }
    if is_root() {
        cargo(&args)
    } else {
        let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        sh(Command::new("sudo")
            .arg("-E")
            .arg(cargo_bin)
            .args(&args)
            .current_dir(workspace()))
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sh(Command::new(cargo).args(args).current_dir(workspace()))
}

/// `program` as root: directly when we are, through sudo otherwise.
fn privileged(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=DEBIAN_FRONTEND").arg(program);
        c
    }
}

/// Runs tcptrace as root and exits with its status.
fn exec_as_root(bin: &PathBuf, args: &[String]) -> Result<()> {
    let status = privileged(bin)
        .args(args)
        .status()
        .context("run tcptrace")?;
    std::process::exit(status.code().unwrap_or(1));
}

fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("run {}", cmd.get_program().display()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
