//! Views of a [`Snapshot`]: the plain-text table ([`table`]) and the live
//! full-screen view ([`tui`]). Both are pure renderings of snapshots.
//!
//! This module holds what they share, so that `watch`, `watch --once` and a
//! piped `watch` show the same columns with the same numbers: the options
//! ([`TableOptions`]), which rows are shown in which order ([`rows`]), the
//! cells of a row ([`columns`], [`cells`]) and per-second [`rates`] from two
//! consecutive snapshots.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::findings::{Finding, Severity};
use crate::snapshot::{Direction, PortSnapshot, Snapshot};
use crate::tcp::TcpState;

mod columns;
mod drill;
#[cfg(test)]
mod fixtures;
pub mod human;
pub mod table;
pub mod terminal;
pub mod tui;

pub use columns::{Align, Cell, Column, Tone, cells, columns, pad, widths};

/// The states with a live-count column, in the order a connection meets them,
/// with their column headers.
pub const STATES: [(TcpState, &str); 9] = [
    (TcpState::SynSent, "SYN_S"),
    (TcpState::SynRecv, "SYN_R"),
    (TcpState::Established, "ESTAB"),
    (TcpState::FinWait1, "FIN_W1"),
    (TcpState::FinWait2, "FIN_W2"),
    (TcpState::TimeWait, "TIME_W"),
    (TcpState::CloseWait, "CLOSE_W"),
    (TcpState::LastAck, "LAST_ACK"),
    (TcpState::Closing, "CLOSING"),
];

/// The state whose dwell the table shows unless told otherwise.
///
/// ESTABLISHED, because every connection that carries traffic passes through
/// it, so every active port has numbers here, and its dwell is the connection
/// lifetime: what changes first when peers reset, time out or hang (compare
/// it with idle and keepalive timeouts). The pathological piles (CLOSE_WAIT,
/// SYN_RECV, FIN_WAIT2) already stand out in the live-count columns; one key
/// (`d`) or `--dwell` switches the dwell columns to them.
pub const DEFAULT_DWELL_STATE: TcpState = TcpState::Established;

/// What to show and in which order; shared by the table and the live view.
#[derive(Clone, Debug, PartialEq)]
pub struct TableOptions {
    pub sort: SortKey,
    /// Reverse the sort's natural order (ports ascending, counts descending).
    pub reverse: bool,
    /// The state whose dwell (p50/p99/max) and oldest age are shown.
    pub dwell_state: TcpState,
    /// Only these ports; empty shows all. The "other" row is then hidden,
    /// since it is not any of them.
    pub ports: Vec<u16>,
    /// Only rows of this direction.
    pub direction: Option<Direction>,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            sort: SortKey::Port,
            reverse: false,
            dwell_state: DEFAULT_DWELL_STATE,
            ports: Vec::new(),
            direction: None,
        }
    }
}

/// What an empty table says: that the filter hides everything, or that
/// nothing has happened yet.
pub fn empty_message(opts: &TableOptions) -> &'static str {
    if opts.ports.is_empty() && opts.direction.is_none() {
        "(no TCP activity seen yet)"
    } else {
        "(no ports match)"
    }
}

/// A column rows can be sorted by. Port sorts ascending, everything else
/// largest first, ties by port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Port,
    /// Connections waiting for accept().
    AcceptQueue,
    /// Sockets in a state now.
    Now(TcpState),
    Transitions,
    TransitionRate,
    DwellP50,
    DwellP99,
    DwellMax,
    /// Age of the oldest socket in the dwell state.
    Oldest,
    SynackRetrans,
    ResetsSent,
    ResetsReceived,
}

impl SortKey {
    /// In column order, which is also the order `s` cycles through.
    pub const ALL: [SortKey; 20] = [
        Self::Port,
        Self::AcceptQueue,
        Self::Now(STATES[0].0),
        Self::Now(STATES[1].0),
        Self::Now(STATES[2].0),
        Self::Now(STATES[3].0),
        Self::Now(STATES[4].0),
        Self::Now(STATES[5].0),
        Self::Now(STATES[6].0),
        Self::Now(STATES[7].0),
        Self::Now(STATES[8].0),
        Self::Transitions,
        Self::TransitionRate,
        Self::DwellP50,
        Self::DwellP99,
        Self::DwellMax,
        Self::Oldest,
        Self::SynackRetrans,
        Self::ResetsSent,
        Self::ResetsReceived,
    ];

    /// The header of the column it sorts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Port => "PORT",
            Self::AcceptQueue => "LISTEN",
            Self::Now(st) => STATES
                .iter()
                .find(|(s, _)| *s == st)
                .map_or_else(|| st.name(), |(_, h)| h),
            Self::Transitions => "TRANS",
            Self::TransitionRate => "/s",
            Self::DwellP50 => "p50",
            Self::DwellP99 => "p99",
            Self::DwellMax => "max",
            Self::Oldest => "oldest",
            Self::SynackRetrans => "SA_RETX",
            Self::ResetsSent => "RST_OUT",
            Self::ResetsReceived => "RST_IN",
        }
    }

    /// The next (`step` 1) or previous (`step` -1) key in column order.
    #[must_use]
    pub fn cycle(self, step: isize) -> Self {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i.cast_signed() + step)
            .rem_euclid(Self::ALL.len().cast_signed())
            .cast_unsigned()]
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Parses a column header (`trans`, `rst_sent`, `close_w`, `p99`), a state
/// name (`close-wait`: its live count) or `rate` for `/s`.
impl FromStr for SortKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |x: &str| x.to_ascii_lowercase().replace('-', "_");
        let want = norm(s);
        if want == "rate" {
            return Ok(Self::TransitionRate);
        }
        if let Some(k) = Self::ALL.into_iter().find(|k| norm(k.name()) == want) {
            return Ok(k);
        }
        match s.parse::<TcpState>() {
            Ok(st) if STATES.iter().any(|(x, _)| *x == st) => Ok(Self::Now(st)),
            _ => {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                Err(format!(
                    "unknown sort column '{s}' (one of {}, rate)",
                    names.join(", ")
                ))
            }
        }
    }
}

/// A row's identity across snapshots.
pub type RowKey = (Option<u16>, Direction);

pub fn key(row: &PortSnapshot) -> RowKey {
    (row.port, row.direction)
}

/// The port as shown: its number, or `other` for the folded row.
pub fn port_label(port: Option<u16>) -> String {
    port.map_or_else(|| "other".to_string(), |p| p.to_string())
}

/// Per-second rates of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PortRates {
    pub transitions: f64,
    pub synack_retrans: f64,
    pub resets_sent: f64,
    pub resets_received: f64,
}

/// Rates between two snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// The window, in seconds.
    pub interval_s: f64,
    /// False when averaged over the whole run because there was no usable
    /// previous snapshot.
    pub windowed: bool,
    pub events: f64,
    pub lost: f64,
    pub ports: BTreeMap<RowKey, PortRates>,
}

impl Rates {
    /// The rates of `row`; zero for a row absent from `cur`.
    pub fn of(&self, row: &PortSnapshot) -> PortRates {
        self.ports.get(&key(row)).copied().unwrap_or_default()
    }
}

/// Per-second rates from two consecutive snapshots, over the difference of
/// their `uptime_s`. A port new in `cur` counts from 0; a counter that went
/// backwards (a row folded and unfolded) counts as 0, never negative. `None`
/// when uptime did not advance.
pub fn rates(prev: &Snapshot, cur: &Snapshot) -> Option<Rates> {
    let dt = cur.uptime_s - prev.uptime_s;
    if !(dt.is_finite() && dt > 0.0) {
        return None;
    }
    let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
    let ports = cur
        .ports
        .iter()
        .map(|p| {
            let before = prev.ports.iter().find(|q| key(q) == key(p));
            let was = |f: fn(&PortSnapshot) -> u64| before.map_or(0, f);
            let rates = PortRates {
                transitions: per_s(p.transitions, was(|q| q.transitions)),
                synack_retrans: per_s(p.synack_retrans, was(|q| q.synack_retrans)),
                resets_sent: per_s(p.resets_sent_total(), was(PortSnapshot::resets_sent_total)),
                resets_received: per_s(resets_received(p), was(resets_received)),
            };
            (key(p), rates)
        })
        .collect();
    Some(Rates {
        interval_s: dt,
        windowed: true,
        events: per_s(cur.events.total, prev.events.total),
        lost: per_s(cur.events.lost, prev.events.lost),
        ports,
    })
}

/// [`rates`] against `prev`, or, without a usable `prev`, averages since
/// tracing started (as if from an empty snapshot at uptime 0).
pub fn rates_or_average(prev: Option<&Snapshot>, cur: &Snapshot) -> Rates {
    prev.and_then(|p| rates(p, cur))
        .or_else(|| {
            rates(&Snapshot::default(), cur).map(|r| Rates {
                windowed: false,
                ..r
            })
        })
        .unwrap_or_default()
}

/// Resets received, all states.
pub fn resets_received(row: &PortSnapshot) -> u64 {
    row.resets_received.values().sum()
}

/// The reason with the most resets sent, summed over the states before.
pub fn top_reset_reason(row: &PortSnapshot) -> Option<&str> {
    let mut by_reason: Vec<(&str, u64)> = Vec::new();
    for r in &row.resets_sent {
        match by_reason.iter_mut().find(|(n, _)| *n == r.reason) {
            Some((_, c)) => *c += r.count,
            None => by_reason.push((&r.reason, r.count)),
        }
    }
    // max_by_key keeps the last of equals; reversing keeps the first listed.
    by_reason
        .into_iter()
        .rev()
        .max_by_key(|(_, c)| *c)
        .map(|(n, _)| n)
}

/// The rows `opts` selects, in its order; the "other" row stays last.
pub fn rows<'a>(snap: &'a Snapshot, rates: &Rates, opts: &TableOptions) -> Vec<&'a PortSnapshot> {
    let mut rows: Vec<&PortSnapshot> = snap
        .ports
        .iter()
        .filter(|p| opts.direction.is_none_or(|d| p.direction == d))
        .filter(|p| opts.ports.is_empty() || p.port.is_some_and(|port| opts.ports.contains(&port)))
        .collect();
    let (mut other, mut named): (Vec<_>, Vec<_>) = rows.drain(..).partition(|p| p.port.is_none());
    let value = |p: &PortSnapshot| sort_value(opts.sort, p, rates.of(p), opts.dwell_state);
    named.sort_by(|a, b| {
        let by_key = (a.port, a.direction).cmp(&(b.port, b.direction));
        if opts.sort == SortKey::Port {
            by_key
        } else {
            value(b).total_cmp(&value(a)).then(by_key)
        }
    });
    if opts.reverse {
        named.reverse();
    }
    named.append(&mut other);
    named
}

/// The number a row sorts by; absent values (no dwell samples) sort below 0.
fn sort_value(key: SortKey, row: &PortSnapshot, rates: PortRates, dwell: TcpState) -> f64 {
    let dwell_us = |f: fn(&crate::snapshot::Dwell) -> u64| {
        row.states
            .get(&dwell)
            .and_then(|s| s.dwell.as_ref())
            .map_or(-1.0, |d| f(d) as f64)
    };
    match key {
        SortKey::Port => row.port.map_or(f64::MAX, f64::from),
        SortKey::AcceptQueue => row.accept_queue.map_or(-1.0, |q| f64::from(q.len)),
        SortKey::Now(st) => row.now(st) as f64,
        SortKey::Transitions => row.transitions as f64,
        SortKey::TransitionRate => rates.transitions,
        SortKey::DwellP50 => dwell_us(|d| d.p50_us),
        SortKey::DwellP99 => dwell_us(|d| d.p99_us),
        SortKey::DwellMax => dwell_us(|d| d.max_us),
        SortKey::Oldest => row
            .states
            .get(&dwell)
            .and_then(|s| s.oldest_s)
            .unwrap_or(-1.0),
        SortKey::SynackRetrans => row.synack_retrans as f64,
        SortKey::ResetsSent => row.resets_sent_total() as f64,
        SortKey::ResetsReceived => resets_received(row) as f64,
    }
}

/// The summary every view starts with, in three parts so that a renderer can
/// colour the middle one: before LOST, LOST, after. LOST is always there,
/// capitalised, because every count after lost events is incomplete;
/// undecodable records only when there are any (a bug, not a load problem).
pub fn totals(snap: &Snapshot, rates: &Rates) -> [String; 3] {
    let e = &snap.events;
    let window = if rates.windowed {
        // Timer jitter makes a 1 s interval 0.999 s or 1.001 s; to 10 ms it
        // reads the same every refresh.
        let window = (rates.interval_s * 100.0).round() / 100.0;
        format!("last {}", human::duration_s(window))
    } else {
        "avg".to_string()
    };
    let before = format!(
        "up {}  events {} ({}/s {window})",
        human::duration_s(snap.uptime_s),
        e.total,
        human::rate(rates.events),
    );
    let mut after = format!(
        "untracked {}  folded ports {}  sockets {}",
        e.untracked, e.folded_ports, snap.sockets_tracked
    );
    if e.undecodable > 0 {
        let _ = write!(after, "  undecodable {}", e.undecodable);
    }
    [before, format!("LOST {}", e.lost), after]
}

/// The findings about the rows `opts` selects, and the host-wide ones (lost
/// events), in the snapshot's order (most severe first).
pub fn findings<'a>(snap: &'a Snapshot, opts: &TableOptions) -> Vec<&'a Finding> {
    snap.findings
        .iter()
        .filter(|f| {
            f.direction.is_none_or(|d| {
                opts.direction.is_none_or(|o| o == d)
                    && (opts.ports.is_empty() || f.port.is_some_and(|p| opts.ports.contains(&p)))
            })
        })
        .collect()
}

/// The findings of one row, without the host-wide ones.
pub fn findings_of(snap: &Snapshot, (port, dir): RowKey) -> Vec<&Finding> {
    snap.findings
        .iter()
        .filter(|f| f.direction == Some(dir) && f.port == port)
        .collect()
}

/// The severity as a fixed-width tag: `CRIT`, `WARN`, `INFO`.
pub fn severity_tag(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRIT",
        Severity::Warning => "WARN",
        Severity::Info => "INFO",
    }
}

/// A finding in three lines: what and the evidence, the cause, the next step.
pub fn finding_lines(f: &Finding) -> [String; 3] {
    [
        format!(
            "{} {} {}: {}",
            severity_tag(f.severity),
            f.location(),
            f.rule,
            f.evidence
        ),
        format!("     cause: {}", f.cause),
        format!("     next:  {}", f.action),
    ]
}

/// The `findings:` section of the plain table and the text reports: `none`,
/// or three lines per finding, indented.
pub fn findings_text(findings: &[&Finding]) -> String {
    if findings.is_empty() {
        return "findings: none\n".to_string();
    }
    let mut out = format!("findings: {}\n", findings.len());
    for f in findings {
        for line in finding_lines(f) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// [`totals`] as one line.
pub fn totals_line(snap: &Snapshot, rates: &Rates) -> String {
    totals(snap, rates).join("  ")
}

#[cfg(test)]
mod tests;
