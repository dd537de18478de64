//! Chores for tcptrace: `setup` installs the build and test dependencies, `run`
//! builds a release binary and runs it, `test` runs every check CI runs;
//! `bench`, `soak` and `churn` measure what tracing costs under load.

mod bench;
mod churn;
mod netns;
mod soak;
mod tracer;

use std::env;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    /// Measure what tracing costs under connection churn: untraced and traced
    /// runs alternately, figures per pair and medians beside their targets
    /// (as root; --quick for a short check).
    Bench(bench::BenchArgs),
    /// Minutes of churn across many ports with the daemon attached: its RSS
    /// and open fds every few seconds, and whether RSS levels off (as root).
    Soak(soak::SoakArgs),
    /// Connection churn in a private network namespace; prints connections/s
    /// and the namespace's TCP counters (as root).
    Churn(ChurnArgs),
}

#[derive(clap::Args)]
struct ChurnArgs {
    /// How connections end.
    #[arg(long, value_enum, default_value_t = churn::Mode::ClientClose)]
    mode: churn::Mode,
    /// Seconds to churn.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Server threads [default: as many as client threads].
    #[arg(long)]
    server_threads: Option<usize>,
    /// Server ports.
    #[arg(long, default_value_t = 1)]
    ports: u16,
    /// First server port.
    #[arg(long, default_value_t = 9000)]
    base_port: u16,
    /// Bytes echoed per connection in payload mode.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
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
        Cmd::Bench(args) => {
            let bin = build_release(args.no_build)?;
            become_root(&["--no-build"])?;
            install_stop_handler();
            bench::run(args, &bin, &STOP)
        }
        Cmd::Soak(args) => {
            let bin = build_release(args.no_build)?;
            become_root(&["--no-build"])?;
            install_stop_handler();
            soak::run(&args, &bin, &STOP)
        }
        Cmd::Churn(args) => {
            become_root(&[])?;
            install_stop_handler();
            churn_once(&args)
        }
    }
}

/// Builds the release binary (unless told it is built) and returns its path.
fn build_release(built: bool) -> Result<PathBuf> {
    if !built {
        setup()?;
        cargo(&["build", "--release", "--package", "tcptrace"])?;
    }
    let bin = workspace().join("target/release/tcptrace");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with cargo build --release",
            bin.display()
        );
    }
    Ok(bin)
}

/// Re-runs this command through sudo (with `extra` flags) unless already root.
fn become_root(extra: &[&str]) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    let exe = env::current_exe().context("find the xtask binary")?;
    let err = Command::new("sudo")
        .arg("-E")
        .arg(exe)
        .args(env::args_os().skip(1))
        .args(extra)
        .exec();
    Err(err).context("re-run as root with sudo")
}

/// Set by SIGINT/SIGTERM: the churn stops, guards clean up, the command fails.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
    // A second signal ends the process at once.
    // SAFETY: signal() is async-signal-safe.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

fn install_stop_handler() {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic and calls signal().
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

fn churn_once(args: &ChurnArgs) -> Result<()> {
    let cfg = churn::Config {
        mode: args.mode,
        threads: args.threads,
        server_threads: args.server_threads.unwrap_or(args.threads),
        ports: args.ports,
        base_port: args.base_port,
        duration: Duration::from_secs_f64(args.seconds),
        payload: args.payload,
    };
    let ns = netns::Netns::new("churn")?;
    let before = ns.counters()?;
    let out = churn::run(&ns, &cfg, &churn::Progress::default(), &STOP)?;
    let after = ns.counters()?;
    println!(
        "{} connections in {:.2} s: {:.0} connections/s ({} mode, {} client + {} server threads, {} ports, netns {})",
        out.connections,
        out.elapsed.as_secs_f64(),
        out.per_second(),
        cfg.mode.name(),
        cfg.threads,
        cfg.server_threads,
        cfg.ports,
        ns.inode
    );
    println!(
        "errors: {} client, {} server{}",
        out.errors,
        out.server_errors,
        out.first_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" (first: {e})"))
    );
    let keys = [
        "Tcp:ActiveOpens",
        "Tcp:PassiveOpens",
        "Tcp:AttemptFails",
        "Tcp:EstabResets",
        "Tcp:OutRsts",
        "TcpExt:ListenOverflows",
        "TcpExt:TCPTimeWaitOverflow",
        "TcpExt:TW",
    ];
    let counters: Vec<String> = keys
        .iter()
        .map(|k| format!("{k} {}", after.delta(&before, k)))
        .collect();
    println!("kernel: {}", counters.join(", "));
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
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
        cargo(&args)?;
    } else {
        let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        sh(Command::new("sudo")
            .arg("-E")
            .arg(cargo_bin)
            .args(&args)
            .current_dir(workspace()))?;
    }
    if filter.is_none() {
        // A short run of the benchmark keeps it working; its figures are
        // printed, never asserted.
        cargo(&[
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
            "--quick",
        ])?;
    }
    Ok(())
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
