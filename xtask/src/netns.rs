//! Private network namespaces for the benchmarks: loopback up, deleted on drop,
//! entered per thread with setns(2) (as the kernel tests do), and the kernel's
//! TCP counters read from inside.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use anyhow::{Context, Result, bail};

/// A network namespace made with `ip netns add`, removed on drop.
pub struct Netns {
    pub name: String,
    /// The inode tcptrace's `--netns` takes.
    pub inode: u64,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tcptrace-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // Owned from here on: a failure below still deletes it.
        let mut ns = Self { name, inode: 0 };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ns.inode = std::fs::metadata(ns.path())
            .with_context(|| format!("stat {}", ns.path().display()))?
            .ino();
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path();
        thread::spawn(move || {
            enter(&path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// The namespace's /proc/net/snmp and /proc/net/netstat counters, keyed
    /// `"Tcp:ActiveOpens"`, `"TcpExt:ListenOverflows"`, ...
    pub fn counters(&self) -> Result<Counters> {
        self.run(|| {
            let mut all = HashMap::new();
            for file in ["snmp", "netstat"] {
                // /proc/thread-self/net is this thread's namespace.
                let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                    .with_context(|| format!("read /proc/thread-self/net/{file}"))?;
                parse_counters(&text, &mut all);
            }
            Ok(Counters(all))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn enter(path: &PathBuf) -> Result<()> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns on a valid namespace fd; it changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Kernel SNMP/netstat counters of one namespace at one moment.
#[derive(Clone, Debug, Default)]
pub struct Counters(HashMap<String, u64>);

impl Counters {
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// `self - earlier` for one counter.
    pub fn delta(&self, earlier: &Counters, key: &str) -> u64 {
        self.get(key).saturating_sub(earlier.get(key))
    }
}

/// The files are pairs of lines: `Group: Name1 Name2 ...`, `Group: v1 v2 ...`.
fn parse_counters(text: &str, out: &mut HashMap<String, u64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [heads, vals] = pair else { continue };
        let mut h = heads.split_whitespace();
        let mut v = vals.split_whitespace();
        let (Some(group), Some(_)) = (h.next(), v.next()) else {
            continue;
        };
        let group = group.trim_end_matches(':');
        for (name, value) in h.zip(v) {
            // Tcp: MaxConn is -1; such values are of no interest here.
            if let Ok(n) = value.parse::<u64>() {
                out.insert(format!("{group}:{name}"), n);
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snmp_pairs() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 42\n";
        let mut m = HashMap::new();
        parse_counters(text, &mut m);
        let c = Counters(m);
        assert_eq!(c.get("Tcp:ActiveOpens"), 42);
        assert_eq!(c.get("Ip:DefaultTTL"), 64);
        assert_eq!(c.get("Tcp:MaxConn"), 0);
    }
}
