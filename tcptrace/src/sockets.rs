//! `tcptrace sockets`: the TCP sockets of the host now, from sock_diag, joined
//! with what tracing knows: time in state (exact when a tcptrace daemon saw
//! the socket enter it), service port and direction, owning process, queues.
//! Answers "which process sits on 300 CLOSE_WAIT sockets on :8080, and since when".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::aggregate::attribute;
use crate::census::NetnsCensus;
use crate::snapshot::Direction;
use crate::tcp::TcpState;
use crate::track::{Origin, Tracker};

/// What tracking knows of a live socket, by cookie (the daemon's `/sockets`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Known {
    pub cookie: u64,
    pub state: TcpState,
    /// Seconds in `state`; a lower bound when `exact` is false.
    pub age_s: f64,
    pub exact: bool,
    pub origin: Origin,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// The tracker's live sockets at `now_ns`.
pub fn known(tracker: &Tracker, now_ns: u64) -> Vec<Known> {
    tracker
        .sockets()
        .map(|(cookie, s)| {
            let (age_ns, exact) = s.age_ns(now_ns);
            Known {
                cookie: *cookie,
                state: s.state,
                age_s: age_ns as f64 / 1e9,
                exact,
                origin: s.origin,
                pid: s.owner.as_ref().map(|o| o.pid),
                comm: s.owner.as_ref().map(|o| o.comm.to_string()),
            }
        })
        .collect()
}

/// One row of `tcptrace sockets`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketRow {
    pub state: TcpState,
    /// Seconds in `state`, if known; a lower bound when `exact` is false.
    pub age_s: Option<f64>,
    pub exact: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The service port the socket belongs to, and its direction.
    pub port: u16,
    pub direction: Direction,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub recv_q: u32,
    pub send_q: u32,
    pub netns: u32,
    pub cookie: u64,
}

/// Socket inode -> (pid, comm) of a process holding it, from /proc/*/fd.
pub fn owners() -> HashMap<u32, (u32, String)> {
    let mut map = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(&target.to_string_lossy()) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                std::fs::read_to_string(entry.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            });
            map.entry(inode).or_insert_with(|| (pid, comm.clone()));
        }
    }
    map
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Joins the census with tracking and owners.
pub fn join(
    census: &[NetnsCensus],
    known: &HashMap<u64, Known>,
    owners: &HashMap<u32, (u32, String)>,
    ephemeral: &RangeInclusive<u16>,
) -> Vec<SocketRow> {
    let mut rows = Vec::new();
    for ns in census {
        let listening: Vec<u16> = ns
            .sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .map(|s| s.local.port())
            .collect();
        for s in ns
            .sockets
            .iter()
            .filter(|s| s.state != TcpState::NewSynRecv)
        {
            let k = known.get(&s.cookie).filter(|k| k.state == s.state);
            let origin = k.map_or(Origin::Unknown, |k| k.origin);
            let (port, direction) = if s.state == TcpState::Listen {
                (s.local.port(), Direction::In)
            } else {
                attribute(
                    origin,
                    &s.local,
                    &s.remote,
                    listening.contains(&s.local.port()),
                    ephemeral,
                )
            };
            let (age_s, exact) = match (k, s.timewait) {
                (Some(k), _) => (Some(k.age_s), k.exact),
                // The timer of a timewait socket tells how long it has been there.
                (None, true) => (
                    s.age_ms(ns.fin_timeout_ms).map(|ms| ms as f64 / 1e3),
                    s.state == TcpState::TimeWait,
                ),
                (None, false) => (None, false),
            };
            let owner = owners.get(&s.inode).filter(|_| s.inode != 0);
            rows.push(SocketRow {
                state: s.state,
                age_s,
                exact,
                local: s.local,
                remote: s.remote,
                port,
                direction,
                pid: owner.map(|o| o.0).or_else(|| k.and_then(|k| k.pid)),
                comm: owner
                    .map(|o| o.1.clone())
                    .or_else(|| k.and_then(|k| k.comm.clone())),
                recv_q: s.recv_q,
                send_q: s.send_q,
                netns: ns.inode,
                cookie: s.cookie,
            });
        }
    }
    rows
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct SocketFilter {
    /// Service port or either side's port.
    pub ports: Vec<u16>,
    pub states: Vec<TcpState>,
    /// Only sockets known to be at least this old in their state.
    pub older_than_s: Option<f64>,
}

impl SocketFilter {
    pub fn matches(&self, r: &SocketRow) -> bool {
        (self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|p| *p == r.port || *p == r.local.port() || *p == r.remote.port()))
            && (self.states.is_empty() || self.states.contains(&r.state))
            && self
                .older_than_s
                .is_none_or(|min| r.age_s.is_some_and(|a| a >= min))
    }
}

/// Oldest first (unknown ages last), then by port.
pub fn sort(rows: &mut [SocketRow]) {
    rows.sort_by(|a, b| {
        b.age_s
            .unwrap_or(-1.0)
            .total_cmp(&a.age_s.unwrap_or(-1.0))
            .then(a.port.cmp(&b.port))
            .then(a.local.cmp(&b.local))
    });
}

pub const HEADER: &str = "STATE        AGE      PORT  DIR LOCAL                  REMOTE                 PID     COMM            RECV-Q SEND-Q";

pub fn text_line(r: &SocketRow) -> String {
    let age = r
        .age_s
        .map_or_else(|| "?".to_string(), |a| crate::view::human::age(a, r.exact));
    let line = format!(
        "{:<12} {:<8} {:>5} {:<3} {:<22} {:<22} {:<7} {:<15} {:>6} {:>6}",
        r.state.to_string(),
        age,
        r.port,
        r.direction.name(),
        r.local.to_string(),
        r.remote.to_string(),
        r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
        r.comm.as_deref().unwrap_or("-"),
        r.recv_q,
        r.send_q
    );
    line.trim_end().to_string()
}

/// `tcptrace sockets`.
pub async fn run(args: crate::cli::SocketsArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;

    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let only = match args.netns {
        Some(n) => Some(n),
        // Entering other namespaces needs CAP_SYS_ADMIN.
        None if !root => {
            Some(crate::census::netns_inode("/proc/self/ns/net".as_ref()).context("own netns")?)
        }
        None => None,
    };
    let known: HashMap<u64, Known> = if args.no_daemon {
        HashMap::new()
    } else {
        match fetch_known(args.daemon).await {
            Ok(list) => list.into_iter().map(|k| (k.cookie, k)).collect(),
            Err(e) => {
                eprintln!(
                    "tcptrace: no daemon at {} ({e:#}): ages only for TIME_WAIT and FIN_WAIT2 (start `tcptrace daemon` to know them all)",
                    args.daemon
                );
                HashMap::new()
            }
        }
    };
    let (census, owners) =
        tokio::task::spawn_blocking(move || (crate::census::dump_all(only), owners()))
            .await
            .context("census task")?;
    let census = census?;
    let mut rows = join(&census, &known, &owners, &crate::session::ephemeral_ports());
    let filter = SocketFilter {
        ports: args.ports,
        states: args.states,
        older_than_s: args.older_than.map(|d| d.as_secs_f64()),
    };
    rows.retain(|r| filter.matches(r));
    sort(&mut rows);
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{HEADER}")?;
    }
    for r in &rows {
        let line = if args.json {
            serde_json::to_string(r)?
        } else {
            text_line(r)
        };
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    Ok(())
}

/// GET /sockets from a daemon.
async fn fetch_known(addr: SocketAddr) -> anyhow::Result<Vec<Known>> {
    use anyhow::{Context as _, bail};
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let connect = tokio::net::TcpStream::connect(addr);
    let stream = tokio::time::timeout(std::time::Duration::from_secs(2), connect)
        .await
        .context("connect timed out")?
        .context("connect")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/sockets")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.context("GET /sockets")?;
    if !resp.status().is_success() {
        bail!("GET /sockets: {}", resp.status());
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .context("read /sockets")?
        .to_bytes();
    serde_json::from_slice(&body).context("parse /sockets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::CensusSocket;
    use crate::tcp::Family;

    /// (state, age, exact, port, direction, pid) of a row.
    type Row = (TcpState, Option<f64>, bool, u16, Direction, Option<u32>);

    fn sock(state: TcpState, local: &str, remote: &str, cookie: u64, inode: u32) -> CensusSocket {
        CensusSocket {
            netns: 7,
            family: Family::Ipv4,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            cookie,
            timewait: false,
            timer_left_ms: None,
            recv_q: 1,
            send_q: 0,
            uid: 0,
            inode,
        }
    }

    fn census() -> Vec<NetnsCensus> {
        let mut tw = sock(TcpState::TimeWait, "10.0.0.1:40000", "10.0.0.9:5432", 30, 0);
        tw.timewait = true;
        tw.timer_left_ms = Some(45_000);
        vec![NetnsCensus {
            inode: 7,
            fin_timeout_ms: 60_000,
            sockets: vec![
                sock(TcpState::Listen, "10.0.0.1:8080", "0.0.0.0:0", 1, 100),
                sock(
                    TcpState::CloseWait,
                    "10.0.0.1:8080",
                    "10.0.0.2:50000",
                    10,
                    101,
                ),
                sock(
                    TcpState::CloseWait,
                    "10.0.0.1:8080",
                    "10.0.0.2:50001",
                    11,
                    102,
                ),
                tw,
            ],
        }]
    }

    #[test]
    fn joins_census_tracking_and_owners() {
        let known: HashMap<u64, Known> = [Known {
            cookie: 10,
            state: TcpState::CloseWait,
            age_s: 41.5,
            exact: true,
            origin: Origin::Passive,
            pid: Some(31),
            comm: Some("server".into()),
        }]
        .into_iter()
        .map(|k| (k.cookie, k))
        .collect();
        let owners: HashMap<u32, (u32, String)> = [
            (101, (31, "server".to_string())),
            (102, (31, "server".to_string())),
        ]
        .into();
        let mut rows = join(&census(), &known, &owners, &(32768..=60999));
        sort(&mut rows);
        let summary: Vec<Row> = rows
            .iter()
            .map(|r| (r.state, r.age_s, r.exact, r.port, r.direction, r.pid))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    TcpState::CloseWait,
                    Some(41.5),
                    true,
                    8080,
                    Direction::In,
                    Some(31)
                ),
                (
                    TcpState::TimeWait,
                    Some(15.0),
                    true,
                    5432,
                    Direction::Out,
                    None
                ),
                (TcpState::Listen, None, false, 8080, Direction::In, None),
                (
                    TcpState::CloseWait,
                    None,
                    false,
                    8080,
                    Direction::In,
                    Some(31)
                ),
            ]
        );
        let line = text_line(&rows[0]);
        assert_eq!(
            line,
            "CLOSE_WAIT   41s       8080 in  10.0.0.1:8080          10.0.0.2:50000         31      server               1      0"
        );
    }

    #[test]
    fn filters_by_port_state_and_known_age() {
        let mut rows = join(
            &census(),
            &HashMap::new(),
            &HashMap::new(),
            &(32768..=60999),
        );
        sort(&mut rows);
        let f = SocketFilter {
            states: vec![TcpState::CloseWait],
            ..SocketFilter::default()
        };
        assert_eq!(rows.iter().filter(|r| f.matches(r)).count(), 2);
        let f = SocketFilter {
            ports: vec![5432],
            ..SocketFilter::default()
        };
        assert_eq!(rows.iter().filter(|r| f.matches(r)).count(), 1);
        // Unknown ages never pass --older-than; the TIME_WAIT age is known from its timer.
        let f = SocketFilter {
            older_than_s: Some(10.0),
            ..SocketFilter::default()
        };
        let old: Vec<TcpState> = rows
            .iter()
            .filter(|r| f.matches(r))
            .map(|r| r.state)
            .collect();
        assert_eq!(old, [TcpState::TimeWait]);
        assert!(!text_line(&rows[2]).contains('≥'));
    }

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
