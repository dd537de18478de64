//! Findings: what a snapshot means. A pure rule engine over a [`Snapshot`]
//! that names the port (and direction), the evidence (numbers from the
//! snapshot), the likely cause and the next step, in the words of the
//! operators' troubleshooting table (TROUBLESHOOTING.md).
//!
//! # Windows
//!
//! A snapshot is cumulative for `watch` and `/metrics` (everything since
//! tracing started) and covers one interval for the daemon's reports. The
//! rules are built so that both read the same way:
//!
//! - Counts of sockets *now* and their ages are instantaneous: the rules on
//!   them (CLOSE_WAIT, FIN_WAIT2, FIN_WAIT1, SYN_SENT ages, TIME_WAIT, accept
//!   queue) do not depend on the window.
//! - Counts of events (resets, timeouts, retransmits, transitions) are over
//!   `window_s`: pass the snapshot's `uptime_s` for a cumulative snapshot and
//!   the report's `interval_s` for a report. A rule on events fires from
//!   [`FindingsConfig::min_events`] events *and* its per-second rate over the
//!   window (`*_per_s`), so that a burst long ago fades out of a cumulative
//!   view as the window grows, and one stray event in a short window is not a
//!   finding.
//! - Ratios compare counts of the same window with each other (SYN-ACK
//!   retransmits per completed handshake, the share of closes made by this
//!   side), so they mean the same on both.
//! - Rates are shown per second over the window.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::snapshot::{Direction, PortSnapshot, Snapshot, StateSnapshot};
use crate::tcp::TcpState::{
    self, Close, CloseWait, Established, FinWait1, FinWait2, LastAck, SynSent, TimeWait,
};
use crate::view::human::{age, duration_s, rate};

/// What a finding is about. The serde names (`close_wait_leak`, ...) are
/// stable: they are the `rule` label of `tcptrace_findings` and the `rule`
/// field in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// CLOSE_WAIT piling up or staying long: the application does not close.
    CloseWaitLeak,
    /// FIN_WAIT2 many or long: the peer never sends its FIN.
    FinWait2Stuck,
    /// FIN_WAIT1 long: our FIN is not acknowledged.
    FinWait1Stuck,
    /// TIME_WAIT to one destination port approaching the ephemeral range.
    EphemeralPortExhaustion,
    /// A listening port that closes most connections itself.
    ServerActiveClose,
    /// SYN-ACK retransmits high relative to completed handshakes, or
    /// handshakes failing.
    HandshakeFailures,
    /// The listener's accept queue is full.
    AcceptQueueFull,
    /// Connects that end without a connection or a reset.
    ConnectTimeouts,
    /// Resets received in SYN_SENT: connection refused.
    ConnectionRefused,
    /// Resets sent for packets that matched no socket.
    NoListener,
    /// Resets sent when the application closes with unread data or linger 0.
    AbortOnClose,
    /// Resets received on connections established for long: half-open.
    HalfOpenResets,
    /// Events lost: the picture is incomplete.
    LostEvents,
}

impl Rule {
    pub const ALL: [Rule; 13] = [
        Self::CloseWaitLeak,
        Self::FinWait2Stuck,
        Self::FinWait1Stuck,
        Self::EphemeralPortExhaustion,
        Self::ServerActiveClose,
        Self::HandshakeFailures,
        Self::AcceptQueueFull,
        Self::ConnectTimeouts,
        Self::ConnectionRefused,
        Self::NoListener,
        Self::AbortOnClose,
        Self::HalfOpenResets,
        Self::LostEvents,
    ];

    /// The stable snake_case name (the same as serde's).
    pub fn name(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "close_wait_leak",
            Self::FinWait2Stuck => "fin_wait2_stuck",
            Self::FinWait1Stuck => "fin_wait1_stuck",
            Self::EphemeralPortExhaustion => "ephemeral_port_exhaustion",
            Self::ServerActiveClose => "server_active_close",
            Self::HandshakeFailures => "handshake_failures",
            Self::AcceptQueueFull => "accept_queue_full",
            Self::ConnectTimeouts => "connect_timeouts",
            Self::ConnectionRefused => "connection_refused",
            Self::NoListener => "no_listener",
            Self::AbortOnClose => "abort_on_close",
            Self::HalfOpenResets => "half_open_resets",
            Self::LostEvents => "lost_events",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// How urgent a finding is; findings sort most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, usually not harmful (a server closing first).
    Info,
    /// Something is wrong and costs connections or resources.
    Warning,
    /// Failing now or about to (accept queue full, ports running out).
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One thing the snapshot says, with the numbers that say it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: Rule,
    /// The service port of the row; `None` for the "other" row (with a
    /// direction) and for host-wide findings (without one).
    pub port: Option<u16>,
    /// The row's direction; `None` for host-wide findings (lost events),
    /// which belong to no row.
    pub direction: Option<Direction>,
    pub severity: Severity,
    /// Numbers from the snapshot.
    pub evidence: String,
    /// The likely cause.
    pub cause: String,
    /// What to do or check next.
    pub action: String,
}

impl Finding {
    /// Where: `:8080 in`, `:other out`, or `all ports` for host-wide findings.
    pub fn location(&self) -> String {
        match self.direction {
            None => "all ports".to_string(),
            Some(d) => format!(":{} {}", port_name(self.port), d.name()),
        }
    }

    /// True if the finding is about the row (port, direction); host-wide
    /// findings are about every row.
    pub fn concerns(&self, port: Option<u16>, direction: Direction) -> bool {
        self.direction
            .is_none_or(|d| d == direction && self.port == port)
    }
}

fn port_name(port: Option<u16>) -> String {
    port.map_or_else(|| "other".to_string(), |p| p.to_string())
}

/// Linux's default net.ipv4.ip_local_port_range.
fn default_ephemeral() -> RangeInclusive<u16> {
    crate::aggregate::DEFAULT_EPHEMERAL
}

/// Thresholds of the rules; the daemon's `[findings]` table in its TOML
/// config. Every key is optional; the defaults are below. Counts "in the
/// window" and rates `*_per_s` are over the window (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FindingsConfig {
    /// Rules on counts of events fire from this many events in the window
    /// (and their rate). Default 5.
    pub min_events: u64,
    /// `close_wait_leak`: this many in CLOSE_WAIT now, with fewer
    /// CLOSE_WAIT -> LAST_ACK (closes by the application) in the window than
    /// that. Default 10.
    pub close_wait_count: u64,
    /// `close_wait_leak`: or the oldest socket in CLOSE_WAIT, or the p99 of
    /// stays that ended, at least this long. Default 60 s.
    pub close_wait_age_s: f64,
    /// `close_wait_leak` is critical from this many in CLOSE_WAIT now.
    /// Default 100.
    pub close_wait_critical: u64,
    /// `fin_wait2_stuck`: this many in FIN_WAIT2 now, with fewer leaving
    /// FIN_WAIT2 in the window than that. Default 10.
    pub fin_wait2_count: u64,
    /// `fin_wait2_stuck`: or the oldest in FIN_WAIT2 at least this long
    /// (orphans live up to tcp_fin_timeout, 60 s). Default 30 s.
    pub fin_wait2_age_s: f64,
    /// `fin_wait1_stuck`: the oldest in FIN_WAIT1, or the p99 of stays that
    /// ended, at least this long. Default 10 s.
    pub fin_wait1_age_s: f64,
    /// `ephemeral_port_exhaustion`: TIME_WAIT to one destination port (now,
    /// or active closes per second × 60 s) at least this share of the
    /// ephemeral port range. Default 0.5.
    pub time_wait_port_share: f64,
    /// `ephemeral_port_exhaustion` is critical from this share. Default 0.9.
    pub time_wait_port_share_critical: f64,
    /// `server_active_close`: at least this share of the connections that
    /// left ESTABLISHED on an inbound row went to FIN_WAIT1 (closed by this
    /// side), of at least `min_events`. Default 0.5.
    pub server_close_share: f64,
    /// `server_active_close`: or this many in TIME_WAIT now on an inbound
    /// row. Default 1000.
    pub server_time_wait_count: u64,
    /// `handshake_failures`: SYN-ACK retransmits per completed handshake in
    /// the window (with at least `min_events` retransmits). Default 0.1.
    pub synack_retrans_ratio: f64,
    /// `handshake_failures`: or failed handshakes per handshake (with at
    /// least `min_events` failures). Default 0.01.
    pub handshake_failed_ratio: f64,
    /// `connect_timeouts`: the oldest socket in SYN_SENT at least this long
    /// (SYNs are retransmitted after 1 s and 3 s). Default 3 s.
    pub syn_sent_age_s: f64,
    /// `connect_timeouts`: SYN_SENT -> CLOSE without a reset, per second.
    /// Default 0.01/s (36 an hour).
    pub connect_timeouts_per_s: f64,
    /// `connection_refused`: resets received in SYN_SENT, per second.
    /// Default 0.01/s.
    pub refused_per_s: f64,
    /// `no_listener`: resets sent for packets that matched no socket, per
    /// second. Default 0.01/s.
    pub no_listener_per_s: f64,
    /// `abort_on_close`: resets sent on close (unread data, linger 0), per
    /// second. Default 0.01/s.
    pub abort_on_close_per_s: f64,
    /// `half_open_resets`: a reset received in ESTABLISHED counts when the
    /// connection had been ESTABLISHED at least this long. Time in
    /// ESTABLISHED stands in for idle time, which tracepoints cannot see.
    /// Set when tracing starts: it decides what the aggregator counts.
    /// Default 120 s.
    pub half_open_after_s: f64,
    /// `half_open_resets`: such resets per second. Default 0.01/s.
    pub half_open_per_s: f64,
    /// `lost_events` (any loss) is critical from this share of all events.
    /// Default 0.01.
    pub lost_critical_share: f64,
    /// net.ipv4.ip_local_port_range; not a key of the file: the session sets
    /// it from the host.
    #[serde(skip, default = "default_ephemeral")]
    pub ephemeral: RangeInclusive<u16>,
}

/// [`FindingsConfig::half_open_after_s`]'s default, in seconds.
pub const DEFAULT_HALF_OPEN_AFTER_S: u64 = 120;

impl Default for FindingsConfig {
    fn default() -> Self {
        Self {
            min_events: 5,
            close_wait_count: 10,
            close_wait_age_s: 60.0,
            close_wait_critical: 100,
            fin_wait2_count: 10,
            fin_wait2_age_s: 30.0,
            fin_wait1_age_s: 10.0,
            time_wait_port_share: 0.5,
            time_wait_port_share_critical: 0.9,
            server_close_share: 0.5,
            server_time_wait_count: 1000,
            synack_retrans_ratio: 0.1,
            handshake_failed_ratio: 0.01,
            syn_sent_age_s: 3.0,
            connect_timeouts_per_s: 0.01,
            refused_per_s: 0.01,
            no_listener_per_s: 0.01,
            abort_on_close_per_s: 0.01,
            half_open_after_s: DEFAULT_HALF_OPEN_AFTER_S as f64,
            half_open_per_s: 0.01,
            lost_critical_share: 0.01,
            ephemeral: default_ephemeral(),
        }
    }
}

impl FindingsConfig {
    /// Every number must be finite and not negative; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let values = [
            ("close_wait_age_s", self.close_wait_age_s),
            ("fin_wait2_age_s", self.fin_wait2_age_s),
            ("fin_wait1_age_s", self.fin_wait1_age_s),
            ("time_wait_port_share", self.time_wait_port_share),
            (
                "time_wait_port_share_critical",
                self.time_wait_port_share_critical,
            ),
            ("server_close_share", self.server_close_share),
            ("synack_retrans_ratio", self.synack_retrans_ratio),
            ("handshake_failed_ratio", self.handshake_failed_ratio),
            ("syn_sent_age_s", self.syn_sent_age_s),
            ("connect_timeouts_per_s", self.connect_timeouts_per_s),
            ("refused_per_s", self.refused_per_s),
            ("no_listener_per_s", self.no_listener_per_s),
            ("abort_on_close_per_s", self.abort_on_close_per_s),
            ("half_open_after_s", self.half_open_after_s),
            ("half_open_per_s", self.half_open_per_s),
            ("lost_critical_share", self.lost_critical_share),
        ];
        match values.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            Some((key, v)) => Err(format!("{key} must be a number >= 0, not {v}")),
            None => Ok(()),
        }
    }

    /// [`Self::half_open_after_s`] in nanoseconds, for the aggregator.
    pub fn half_open_after_ns(&self) -> u64 {
        secs_to_ns(self.half_open_after_s)
    }
}

fn secs_to_ns(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        #[expect(clippy::cast_sign_loss, reason = "checked positive above")]
        let ns = (s * 1e9).min(u64::MAX as f64) as u64;
        ns
    } else {
        0
    }
}

/// The findings of `snap`, most severe first, then by port (the "other" row
/// and host-wide findings last). `window_s` is the time the snapshot's event
/// counts cover: its `uptime_s` when cumulative, the report's `interval_s`
/// for a daemon report.
pub fn evaluate(snap: &Snapshot, window_s: f64, cfg: &FindingsConfig) -> Vec<Finding> {
    type RuleFn = fn(&Ctx, &Snapshot, &PortSnapshot) -> Option<Finding>;
    const ROW_RULES: [RuleFn; 12] = [
        close_wait_leak,
        fin_wait2_stuck,
        fin_wait1_stuck,
        ephemeral_port_exhaustion,
        server_active_close,
        handshake_failures,
        accept_queue_full,
        connect_timeouts,
        connection_refused,
        no_listener,
        abort_on_close,
        half_open_resets,
    ];
    let ctx = Ctx { cfg, window_s };
    let mut out: Vec<Finding> = snap
        .ports
        .iter()
        .flat_map(|row| ROW_RULES.iter().filter_map(|rule| rule(&ctx, snap, row)))
        .collect();
    out.extend(lost_events(&ctx, snap));
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| (a.port.is_none(), a.port).cmp(&(b.port.is_none(), b.port)))
            .then(a.direction.cmp(&b.direction))
            .then(a.rule.cmp(&b.rule))
    });
    out
}

struct Ctx<'a> {
    cfg: &'a FindingsConfig,
    window_s: f64,
}

impl Ctx<'_> {
    fn per_s(&self, n: u64) -> f64 {
        if self.window_s > 0.0 && self.window_s.is_finite() {
            n as f64 / self.window_s
        } else {
            0.0
        }
    }

    /// Enough events for a rule: `min_events`, and `min_per_s` over the
    /// window (when the window is known).
    fn frequent(&self, n: u64, min_per_s: f64) -> bool {
        let known = self.window_s > 0.0 && self.window_s.is_finite();
        n > 0 && n >= self.cfg.min_events && (!known || self.per_s(n) >= min_per_s)
    }

    /// `in 1m00s (0.1/s)`.
    fn over_window(&self, n: u64) -> String {
        format!(
            "in {} ({}/s)",
            duration_s(self.window_s.max(0.0)),
            per_s_text(self.per_s(n))
        )
    }

    fn window(&self) -> String {
        duration_s(self.window_s.max(0.0))
    }
}

/// A rate with two significant digits below 0.1/s, so that slow rates do not
/// read as zero.
fn per_s_text(x: f64) -> String {
    if x >= 0.1 || x <= 0.0 || !x.is_finite() {
        return rate(x);
    }
    #[expect(clippy::cast_sign_loss, reason = "log10 of x < 0.1 is negative")]
    let decimals = ((-x.log10()).floor() as usize + 2).min(6);
    format!("{x:.decimals$}")
}

fn finding(
    rule: Rule,
    row: &PortSnapshot,
    severity: Severity,
    evidence: String,
    cause: String,
    action: String,
) -> Finding {
    Finding {
        rule,
        port: row.port,
        direction: Some(row.direction),
        severity,
        evidence,
        cause,
        action,
    }
}

/// `:8080`, or the ports folded into "other".
fn port_text(row: &PortSnapshot) -> String {
    row.port.map_or_else(
        || "the ports folded into \"other\"".to_string(),
        |p| format!(":{p}"),
    )
}

/// The owner (`comm[pid]`) of the oldest socket in `state` whose owner is known.
fn owner(row: &PortSnapshot, state: TcpState) -> Option<String> {
    row.oldest
        .iter()
        .filter(|s| s.state == state)
        .find_map(|s| Some(format!("{}[{}]", s.comm.as_ref()?, s.pid?)))
}

/// p99 of the stays in `st` that ended, in seconds.
fn p99_s(st: &StateSnapshot) -> Option<f64> {
    st.dwell
        .as_ref()
        .filter(|d| d.count > 0)
        .map(|d| d.p99_us as f64 / 1e6)
}

fn exits_to(st: &StateSnapshot, to: TcpState) -> u64 {
    st.exits.get(&to).copied().unwrap_or(0)
}

fn at_least(value: Option<f64>, threshold: f64) -> bool {
    value.is_some_and(|v| v >= threshold)
}

/// `312 in CLOSE_WAIT now, oldest ≥41m`.
fn now_text(st: &StateSnapshot, state: TcpState) -> String {
    let mut s = format!("{} in {state} now", st.now);
    if let Some(a) = st.oldest_s.filter(|_| st.now > 0) {
        let _ = write!(s, ", oldest {}", age(a, st.oldest_exact));
    }
    s
}

/// Rule 1: CLOSE_WAIT piling up, or long, with few closes by the application.
fn close_wait_leak(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    let cfg = c.cfg;
    let st = row.states.get(&CloseWait)?;
    let closed = exits_to(st, LastAck);
    let piling = st.now >= cfg.close_wait_count.max(1) && closed < st.now;
    let old = st.now > 0 && at_least(st.oldest_s, cfg.close_wait_age_s);
    let long = at_least(p99_s(st), cfg.close_wait_age_s);
    if !(piling || old || long) {
        return None;
    }
    let mut evidence = format!(
        "{}; {closed} CLOSE_WAIT -> LAST_ACK in {}",
        now_text(st, CloseWait),
        c.window()
    );
    if let Some(p) = p99_s(st) {
        let _ = write!(evidence, " (p99 {})", duration_s(p));
    }
    let who = owner(row, CloseWait);
    if let Some(o) = &who {
        let _ = write!(evidence, "; owner {o}");
    }
    let severity = if st.now >= cfg.close_wait_critical {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(finding(
        Rule::CloseWaitLeak,
        row,
        severity,
        evidence,
        format!(
            "{} does not close() after the peer's FIN",
            who.unwrap_or_else(|| format!("the application on {}", port_text(row)))
        ),
        "fix its read() == 0 and error paths that skip close(); keepalive does not fix this"
            .to_string(),
    ))
}

/// Rule 2: FIN_WAIT2 many or long: the peer never sends its FIN.
fn fin_wait2_stuck(c: &Ctx, snap: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    let cfg = c.cfg;
    let st = row.states.get(&FinWait2)?;
    let left: u64 = st.exits.values().sum();
    // The other end on this host: the same port in the other direction,
    // holding CLOSE_WAIT.
    let other_dir = match row.direction {
        Direction::In => Direction::Out,
        Direction::Out => Direction::In,
    };
    let mirror = snap
        .ports
        .iter()
        .find(|p| p.port == row.port && p.direction == other_dir)
        .map(|p| p.now(CloseWait))
        .filter(|n| *n > 0);
    // A socket closed in FIN_WAIT2 leaves it for the tracepoint (-> CLOSE)
    // but stays there as an orphan in the census, so exits do not prove
    // progress when the other end is known to be stuck in CLOSE_WAIT.
    let many = st.now >= cfg.fin_wait2_count.max(1) && (left < st.now || mirror.is_some());
    let old = st.now > 0 && at_least(st.oldest_s, cfg.fin_wait2_age_s);
    if !(many || old) {
        return None;
    }
    let mut evidence = format!(
        "{}; {left} left FIN_WAIT2 in {}",
        now_text(st, FinWait2),
        c.window()
    );
    let cause = if let Some(n) = mirror {
        let _ = write!(
            evidence,
            "; :{} {} has {n} in CLOSE_WAIT",
            port_name(row.port),
            other_dir.name()
        );
        format!(
            "the peer never sends its FIN: it is :{} {} on this host (close_wait_leak)",
            port_name(row.port),
            other_dir.name()
        )
    } else {
        "the peer never sends its FIN: its application hangs, was killed or never closes"
            .to_string()
    };
    Some(finding(
        Rule::FinWait2Stuck,
        row,
        Severity::Warning,
        evidence,
        cause,
        "fix the peer application; tcp_fin_timeout (60 s) bounds only orphans".to_string(),
    ))
}

/// Rule 3: FIN_WAIT1 long: our FIN is not acknowledged.
fn fin_wait1_stuck(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    let cfg = c.cfg;
    let st = row.states.get(&FinWait1)?;
    let old = st.now > 0 && at_least(st.oldest_s, cfg.fin_wait1_age_s);
    let long = at_least(p99_s(st), cfg.fin_wait1_age_s);
    if !(old || long) {
        return None;
    }
    let mut evidence = now_text(st, FinWait1);
    if let (Some(p), Some(d)) = (p99_s(st), st.dwell.as_ref()) {
        let _ = write!(
            evidence,
            "; p99 of {} stays that ended {}",
            d.count,
            duration_s(p)
        );
    }
    if row.retransmits > 0 {
        let _ = write!(
            evidence,
            "; {} retransmits in {}",
            row.retransmits,
            c.window()
        );
    }
    Some(finding(
        Rule::FinWait1Stuck,
        row,
        Severity::Warning,
        evidence,
        "our FIN is not acknowledged: loss, or the peer is gone".to_string(),
        format!(
            "check the path to the peers of {} and whether they are up",
            port_text(row)
        ),
    ))
}

/// TIME_WAIT lasts a fixed 60 s on Linux (TCP_TIMEWAIT_LEN).
const TIME_WAIT_S: f64 = 60.0;

/// Rule 4: TIME_WAIT to one destination port approaching the ephemeral range.
fn ephemeral_port_exhaustion(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    if row.direction != Direction::Out {
        return None;
    }
    let cfg = c.cfg;
    let (lo, hi) = (*cfg.ephemeral.start(), *cfg.ephemeral.end());
    let size = f64::from(hi.saturating_sub(lo)) + 1.0;
    let now = row.now(TimeWait);
    // Active closes lead to TIME_WAIT, for 60 s each: at this rate, the
    // steady state is rate × 60 s sockets (the tracepoint never sees
    // TIME_WAIT itself; the census counts it now).
    let closes = row
        .states
        .get(&Established)
        .map_or(0, |s| exits_to(s, FinWait1));
    let projected = c.per_s(closes) * TIME_WAIT_S;
    let peak = (now as f64).max(projected);
    let share = peak / size;
    if share < cfg.time_wait_port_share || peak < 1.0 {
        return None;
    }
    let severity = if share >= cfg.time_wait_port_share_critical {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(finding(
        Rule::EphemeralPortExhaustion,
        row,
        severity,
        format!(
            "{now} in TIME_WAIT now; {closes} active closes {} × 60 s = {projected:.0}: {:.0}% of the {size} ephemeral ports ({lo}-{hi})",
            c.over_window(closes),
            share * 100.0
        ),
        "this host closes first; each TIME_WAIT holds a local port to that address for 60 s: then connect() fails with EADDRNOTAVAIL".to_string(),
        "connection pooling / keep-alive, net.ipv4.tcp_tw_reuse=1; never tcp_tw_recycle (broke NAT, removed in 4.12)".to_string(),
    ))
}

/// Rule 5: a listening port that actively closes most connections.
fn server_active_close(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    if row.direction != Direction::In {
        return None;
    }
    let cfg = c.cfg;
    let (ours, theirs) = row
        .states
        .get(&Established)
        .map_or((0, 0), |s| (exits_to(s, FinWait1), exits_to(s, CloseWait)));
    let closes = ours + theirs;
    let mostly_ours = closes > 0
        && closes >= cfg.min_events
        && ours as f64 >= cfg.server_close_share * closes as f64;
    let time_wait = row.now(TimeWait);
    let many = time_wait >= cfg.server_time_wait_count.max(1);
    if !(mostly_ours || many) {
        return None;
    }
    Some(finding(
        Rule::ServerActiveClose,
        row,
        Severity::Info,
        format!(
            "{ours} of {closes} connections closed by this side (ESTABLISHED -> FIN_WAIT1, not CLOSE_WAIT) in {}; {time_wait} in TIME_WAIT now",
            c.window()
        ),
        "the server closes first, so TIME_WAIT (60 s each) piles up here; restarts without SO_REUSEADDR get EADDRINUSE".to_string(),
        "let clients close first (keep-alive) if it matters; SO_REUSEADDR on the listener".to_string(),
    ))
}

fn queue_full(row: &PortSnapshot) -> bool {
    row.accept_queue
        .is_some_and(|q| q.max > 0 && q.len >= q.max)
}

/// Rule 6: SYN-ACK retransmits high relative to completed handshakes, or
/// handshakes failing.
fn handshake_failures(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    if row.direction != Direction::In {
        return None;
    }
    let cfg = c.cfg;
    let (retrans, done, failed) = (
        row.synack_retrans,
        row.handshakes.completed,
        row.handshakes.failed,
    );
    let retransmitting = retrans >= cfg.min_events.max(1)
        && retrans as f64 >= cfg.synack_retrans_ratio * done as f64;
    let failing = failed >= cfg.min_events.max(1)
        && failed as f64 >= cfg.handshake_failed_ratio * (done + failed) as f64;
    if !(retransmitting || failing) {
        return None;
    }
    let mut evidence = format!(
        "{retrans} SYN-ACK retransmits {} for {done} completed handshakes, {failed} failed; {} in SYN_RECV now",
        c.over_window(retrans),
        row.now(TcpState::SynRecv)
    );
    if let Some(q) = row.accept_queue {
        let _ = write!(evidence, "; accept queue {}/{}", q.len, q.max);
    }
    let full = queue_full(row);
    let severity = if full || failed > done {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let (cause, action) = if full {
        (
            "accept-queue overflow: the backlog is full, final ACKs are dropped and SYN-ACKs resent",
            "accept() faster; raise the listen() backlog and net.core.somaxconn",
        )
    } else {
        (
            "a SYN flood (spoofed sources) or lost final ACKs",
            "tcp_syncookies=1, raise tcp_max_syn_backlog, rate-limit SYNs at the firewall",
        )
    };
    Some(finding(
        Rule::HandshakeFailures,
        row,
        severity,
        evidence,
        cause.to_string(),
        action.to_string(),
    ))
}

/// Rule 6, the accept queue: the backlog is full now.
fn accept_queue_full(_: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    let q = row.accept_queue.filter(|_| queue_full(row))?;
    Some(finding(
        Rule::AcceptQueueFull,
        row,
        Severity::Critical,
        format!(
            "accept queue {}/{} now (full); {} in SYN_RECV, {} SYN-ACK retransmits",
            q.len,
            q.max,
            row.now(TcpState::SynRecv),
            row.synack_retrans
        ),
        format!(
            "the application on {} does not accept() as fast as connections complete",
            port_text(row)
        ),
        "accept() faster (more workers); raise the listen() backlog and net.core.somaxconn"
            .to_string(),
    ))
}

/// Rule 7: connects that time out: SYN_SENT long, or SYN_SENT -> CLOSE
/// without a reset received.
fn connect_timeouts(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    if row.direction != Direction::Out {
        return None;
    }
    let cfg = c.cfg;
    let st = row.states.get(&SynSent)?;
    let refused = row.resets_received.get(&SynSent).copied().unwrap_or(0);
    let timeouts = exits_to(st, Close).saturating_sub(refused);
    let frequent = c.frequent(timeouts, cfg.connect_timeouts_per_s);
    let old = st.now > 0 && at_least(st.oldest_s, cfg.syn_sent_age_s);
    if !(frequent || old) {
        return None;
    }
    Some(finding(
        Rule::ConnectTimeouts,
        row,
        Severity::Warning,
        format!(
            "{timeouts} connects ended SYN_SENT -> CLOSE without a reset {}; {}",
            c.over_window(timeouts),
            now_text(st, SynSent)
        ),
        "connect timeouts: the target is down or the path is filtered".to_string(),
        format!(
            "check the targets on {} and the firewalls on the way",
            port_text(row)
        ),
    ))
}

/// Rule 8: resets received in SYN_SENT: connection refused.
fn connection_refused(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    if row.direction != Direction::Out {
        return None;
    }
    let n = row.resets_received.get(&SynSent).copied().unwrap_or(0);
    if !c.frequent(n, c.cfg.refused_per_s) {
        return None;
    }
    Some(finding(
        Rule::ConnectionRefused,
        row,
        Severity::Warning,
        format!("{n} resets received in SYN_SENT {}", c.over_window(n)),
        format!(
            "nothing listens on {} at the target: ECONNREFUSED",
            port_text(row)
        ),
        "fix the target, or the client's address and port".to_string(),
    ))
}

/// `NO_SOCKET 20, unknown 3`: resets by reason, most first.
fn reasons_text<'a>(resets: impl Iterator<Item = &'a crate::snapshot::ResetCount>) -> String {
    let mut by: Vec<(String, u64)> = Vec::new();
    for r in resets {
        let label = match r.state_before {
            Some(st) if r.reason != "NO_SOCKET" => format!("{} (in {st})", r.reason),
            _ => r.reason.clone(),
        };
        match by.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += r.count,
            None => by.push((label, r.count)),
        }
    }
    by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by.iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rule 9: resets sent for packets that matched no socket.
fn no_listener(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    if row.direction != Direction::In {
        return None;
    }
    let resets = || row.resets_sent.iter().filter(|r| r.state_before.is_none());
    let n: u64 = resets().map(|r| r.count).sum();
    if !c.frequent(n, c.cfg.no_listener_per_s) {
        return None;
    }
    let port = port_text(row);
    let evidence = format!(
        "{n} resets sent for packets that matched no socket ({}) {}",
        reasons_text(resets()),
        c.over_window(n)
    );
    let (severity, cause, action) = if row.listening {
        (
            Severity::Info,
            format!(
                "packets for connections {port} no longer has (closed, or from before a restart)"
            ),
            format!(
                "usually benign after a restart; else see what peers send (tcptrace events -p {})",
                port_name(row.port)
            ),
        )
    } else {
        (
            Severity::Warning,
            format!("clients hit {port}, where nothing listens: ECONNREFUSED"),
            format!(
                "find what calls, and why (tcptrace events -p {})",
                port_name(row.port)
            ),
        )
    };
    Some(finding(
        Rule::NoListener,
        row,
        severity,
        evidence,
        cause,
        action,
    ))
}

/// Resets that an application's close sends: with unread data
/// (TCP_ABORT_ON_CLOSE), with linger 0 (TCP_ABORT_ON_LINGER, or TCP_STATE
/// from ESTABLISHED, which is what SO_LINGER {1, 0} gives on current
/// kernels), or, on kernels without reasons, any reset sent from ESTABLISHED.
fn is_abort_on_close(r: &crate::snapshot::ResetCount) -> bool {
    match r.reason.as_str() {
        "TCP_ABORT_ON_CLOSE" | "TCP_ABORT_ON_LINGER" => true,
        "TCP_STATE" | "unknown" => r.state_before == Some(Established),
        _ => false,
    }
}

/// Rule 10: resets sent on close (unread data, linger 0).
fn abort_on_close(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    let resets = || row.resets_sent.iter().filter(|r| is_abort_on_close(r));
    let n: u64 = resets().map(|r| r.count).sum();
    if !c.frequent(n, c.cfg.abort_on_close_per_s) {
        return None;
    }
    Some(finding(
        Rule::AbortOnClose,
        row,
        Severity::Warning,
        format!(
            "{n} resets sent on close ({}) {}",
            reasons_text(resets()),
            c.over_window(n)
        ),
        format!(
            "the application on {} closes with unread data or SO_LINGER 0: peers get ECONNRESET",
            port_text(row)
        ),
        "read until EOF before close(), or accept it as intended".to_string(),
    ))
}

/// Rule 11: resets received in ESTABLISHED on connections established for
/// long: half-open connections.
fn half_open_resets(c: &Ctx, _: &Snapshot, row: &PortSnapshot) -> Option<Finding> {
    let n = row.resets_received_long_established;
    if !c.frequent(n, c.cfg.half_open_per_s) {
        return None;
    }
    let all = row.resets_received.get(&Established).copied().unwrap_or(0);
    Some(finding(
        Rule::HalfOpenResets,
        row,
        Severity::Warning,
        format!(
            "{n} resets received in ESTABLISHED on connections established ≥{} {} ({all} in ESTABLISHED in all)",
            duration_s(c.cfg.half_open_after_s),
            c.over_window(n)
        ),
        "half-open connections: the peer rebooted, or a NAT/firewall forgot the idle flow"
            .to_string(),
        "keepalive below the NAT/firewall idle timeout (Linux's starts at 7200 s), or heartbeats"
            .to_string(),
    ))
}

/// Rule 12: lost events: every number is incomplete.
fn lost_events(c: &Ctx, snap: &Snapshot) -> Option<Finding> {
    let e = &snap.events;
    if e.lost == 0 {
        return None;
    }
    let share = e.lost as f64 / (e.lost + e.total) as f64;
    let severity = if share >= c.cfg.lost_critical_share {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        rule: Rule::LostEvents,
        port: None,
        direction: None,
        severity,
        evidence: format!(
            "{} events lost, {} read ({:.2}% lost)",
            e.lost,
            e.total,
            share * 100.0
        ),
        cause: lost_cause(e.lost.saturating_sub(e.lost_skipped), e.lost_skipped),
        action: if e.lost_skipped >= e.lost {
            "nothing to tune: the kernel skips a program that an interrupt's softirq would \
             re-enter, and these arrived while the catcher program was itself running"
                .to_string()
        } else {
            "raise --ring-size (default 4M), or trace fewer ports (--port filters in the kernel)"
                .to_string()
        },
    })
}

fn lost_cause(ring_full: u64, skipped: u64) -> String {
    let what = match (ring_full, skipped) {
        (_, 0) => "the ring buffer overflowed".to_string(),
        (0, _) => "the kernel skipped the tracer for them (recursion guard)".to_string(),
        (f, s) => format!(
            "the ring buffer overflowed ({f}) and the kernel skipped the tracer ({s}, recursion guard)"
        ),
    };
    format!("{what}: every number here misses those events")
}

#[cfg(test)]
#[path = "findings_tests.rs"]
mod tests;
