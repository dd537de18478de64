//! Prometheus exposition of a [`Snapshot`] for `/metrics`, and the HTTP
//! endpoint ([`serve`]) that serves it.
//!
//! The daemon's snapshot already holds cumulative counts (since tracing
//! started), so a prometheus-client [`Collector`] reads it at scrape time
//! instead of keeping live metric objects that would count every event twice.
//!
//! Two text formats come out of the same collector. prometheus-client writes
//! OpenMetrics 1.0, which Prometheus asks for by default. `promtool check
//! metrics` and other classic tools only read the older Prometheus text format
//! 0.0.4. In that format a counter family is named with its `_total` suffix,
//! and in OpenMetrics it is not. [`encode`] writes the classic format.
//! `/metrics` picks the format from the scraper's `Accept` header.

mod http;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use http::{SocketsRequest, serve, serve_with_sockets};

use crate::event::Kind;
use crate::snapshot::{Direction, Dwell, PortSnapshot, Snapshot};

/// Content type of [`encode`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0 text, as prometheus-client writes it.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper lists it (Prometheus does, first), else
    /// the classic format, which every scraper, curl and promtool read.
    fn from_accept(accept: Option<&str>) -> Self {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The snapshot in the Prometheus text format 0.0.4 (see the module doc).
///
/// # Panics
///
/// Never: the only possible errors come from the writer, and this one is a
/// `String`.
pub fn encode(snap: &Snapshot) -> String {
    render(Arc::new(snap.clone()), Format::Prometheus)
}

/// The snapshot as OpenMetrics 1.0.0 text, ending in `# EOF`.
///
/// # Panics
///
/// Never, as for [`encode`].
pub fn encode_openmetrics(snap: &Snapshot) -> String {
    render(Arc::new(snap.clone()), Format::OpenMetrics)
}

fn render(snap: Arc<Snapshot>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { snap, format }));
    let mut out = String::new();
    let written = match format {
        Format::Prometheus => {
            prometheus_client::encoding::text::encode_registry(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    written.expect("writing to a String cannot fail");
    out
}

/// Bucket bounds of every duration histogram: 4^k µs for k = 0..=17 (1 µs up
/// to 4^17 µs ≈ 4.8 h), then +Inf. Every series gets all of them so that
/// PromQL can add up or compare histograms across ports and states. The
/// aggregator's own buckets are the same powers of 4, so each one lands in
/// exactly one of these. Longer stays count only in +Inf.
const BUCKET_BOUNDS: u32 = 18;

/// A duration histogram of the snapshot, in seconds.
#[derive(Debug)]
struct Histogram<'a>(&'a Dwell);

impl EncodeMetric for Histogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let d = self.0;
        let mut buckets: Vec<(f64, u64)> = (0..BUCKET_BOUNDS)
            .map(|k| (4u64.pow(k) as f64 / 1e6, 0))
            .collect();
        let mut finite = 0;
        for b in &d.buckets {
            // The first bound at or above the bucket's own, so that no value is
            // ever counted below its true bound.
            if let Some(k) = (0..BUCKET_BOUNDS).find(|k| 4u64.pow(*k) >= b.le_us) {
                buckets[k as usize].1 += b.count;
                finite += b.count;
            }
        }
        // prometheus-client makes the counts cumulative, so +Inf ends up
        // equal to `count`.
        buckets.push((f64::INFINITY, d.count.saturating_sub(finite)));
        let sum_s = d.mean_us * d.count as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum_s, d.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A counter value, written the way the chosen format wants it.
#[derive(Debug)]
struct Count {
    value: u64,
    format: Format,
}

impl EncodeMetric for Count {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        match self.format {
            // Appends `_total` to the family name on every sample.
            Format::OpenMetrics => ConstCounter::new(self.value).encode(encoder),
            // The family is already named `..._total`, and samples carry
            // exactly that name: a plain value line.
            Format::Prometheus => ConstGauge::new(self.value).encode(encoder),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

type Labels = Vec<(&'static str, String)>;

/// `other` for the row that folds ports beyond the cap.
fn port_label(p: &PortSnapshot) -> String {
    p.port
        .map_or_else(|| "other".to_string(), |n| n.to_string())
}

/// `port` and `direction`. The same port can have an "in" row (it listens)
/// and an "out" row (we connect to it elsewhere), so every per-row series
/// carries `direction`, or the two rows would make duplicate series. The
/// issue's `oldest_socket_age_seconds{port,state}` and
/// `resets_sent_total{port,reason}` get it for that reason too.
fn row_labels(p: &PortSnapshot) -> Labels {
    vec![
        ("port", port_label(p)),
        ("direction", p.direction.name().to_string()),
    ]
}

fn with(mut labels: Labels, key: &'static str, value: &dyn fmt::Display) -> Labels {
    labels.push((key, value.to_string()));
    labels
}

/// One metric family: its HELP and TYPE lines, then one sample line (or a
/// histogram's lines) per label set.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: &[(Labels, M)],
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, metric_type)?;
    match series {
        // Written through `encode_family`, an empty label set would print `name{}`.
        [(labels, metric)] if labels.is_empty() => metric.encode(family),
        _ => series
            .iter()
            .try_for_each(|(labels, metric)| metric.encode(family.encode_family(labels)?)),
    }
}

/// Reads one snapshot at scrape time.
#[derive(Debug)]
struct SnapshotCollector {
    snap: Arc<Snapshot>,
    format: Format,
}

impl SnapshotCollector {
    /// `name` ends in `_total`. OpenMetrics names the family without it.
    fn counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        series: Vec<(Labels, u64)>,
    ) -> fmt::Result {
        let name = match self.format {
            Format::OpenMetrics => name.strip_suffix("_total").unwrap_or(name),
            Format::Prometheus => name,
        };
        let series: Vec<_> = series
            .into_iter()
            .map(|(labels, value)| {
                (
                    labels,
                    Count {
                        value,
                        format: self.format,
                    },
                )
            })
            .collect();
        family(enc, name, help, MetricType::Counter, &series)
    }
}

fn gauge<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue,
{
    let series: Vec<_> = series
        .into_iter()
        .map(|(labels, v)| (labels, ConstGauge::new(v)))
        .collect();
    family(enc, name, help, MetricType::Gauge, &series)
}

impl Collector for SnapshotCollector {
    #[allow(clippy::too_many_lines)] // One flat list of metrics reads best.
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = &*self.snap;
        let rows = &snap.ports;
        // Metrics labelled by port alone describe the listening side: taken
        // from the "in" rows, which have each port (and "other") once.
        let inbound: Vec<&PortSnapshot> = rows
            .iter()
            .filter(|p| p.direction == Direction::In)
            .collect();
        let states = || {
            rows.iter().flat_map(|p| {
                p.states
                    .iter()
                    .map(move |(st, s)| (with(row_labels(p), "state", st), s))
            })
        };
        let port_only = |p: &PortSnapshot| vec![("port", port_label(p))];
        let e = &mut enc;

        let dwell: Vec<_> = states()
            .filter_map(|(labels, s)| s.dwell.as_ref().map(|d| (labels, Histogram(d))))
            .collect();
        family(
            e,
            "tcptrace_state_dwell_seconds",
            "Time sockets spent in a TCP state, counted when they leave it (stays that began before tracing are left out).",
            MetricType::Histogram,
            &dwell,
        )?;
        let handshake: Vec<_> = inbound
            .iter()
            .filter_map(|p| {
                p.handshakes
                    .time
                    .as_ref()
                    .map(|d| (port_only(p), Histogram(d)))
            })
            .collect();
        family(
            e,
            "tcptrace_handshake_seconds",
            "Time from the first SYN-ACK to the final ACK of completed inbound handshakes.",
            MetricType::Histogram,
            &handshake,
        )?;

        let transitions = rows
            .iter()
            .flat_map(|p| {
                p.states.iter().flat_map(move |(from, s)| {
                    s.exits
                        .iter()
                        .map(move |(to, n)| (with(with(row_labels(p), "from", from), "to", to), *n))
                })
            })
            .collect();
        self.counter(
            e,
            "tcptrace_transitions_total",
            "TCP state transitions.",
            transitions,
        )?;
        let per_inbound = |f: fn(&PortSnapshot) -> u64| -> Vec<(Labels, u64)> {
            inbound.iter().map(|p| (port_only(p), f(p))).collect()
        };
        self.counter(
            e,
            "tcptrace_synack_retransmits_total",
            "SYN-ACKs retransmitted by listeners.",
            per_inbound(|p| p.synack_retrans),
        )?;
        self.counter(
            e,
            "tcptrace_handshakes_completed_total",
            "Inbound handshakes that reached ESTABLISHED.",
            per_inbound(|p| p.handshakes.completed),
        )?;
        self.counter(
            e,
            "tcptrace_handshakes_failed_total",
            "Inbound handshakes abandoned after the last SYN-ACK retransmit.",
            per_inbound(|p| p.handshakes.failed),
        )?;
        let resets_sent = rows
            .iter()
            .flat_map(|p| {
                // Summed over the state before the reset, which is not a label.
                let mut by_reason = std::collections::BTreeMap::<&str, u64>::new();
                for r in &p.resets_sent {
                    *by_reason.entry(&r.reason).or_default() += r.count;
                }
                by_reason
                    .into_iter()
                    .map(move |(reason, n)| (with(row_labels(p), "reason", &reason), n))
            })
            .collect();
        self.counter(
            e,
            "tcptrace_resets_sent_total",
            "Resets sent, by the kernel's reason.",
            resets_sent,
        )?;
        let resets_received = rows
            .iter()
            .flat_map(|p| {
                p.resets_received
                    .iter()
                    .map(move |(st, n)| (with(row_labels(p), "state", st), *n))
            })
            .collect();
        self.counter(
            e,
            "tcptrace_resets_received_total",
            "Resets received, by the state they hit.",
            resets_received,
        )?;
        let retransmits = rows
            .iter()
            .map(|p| (row_labels(p), p.retransmits))
            .collect();
        self.counter(
            e,
            "tcptrace_retransmits_total",
            "Data segments retransmitted.",
            retransmits,
        )?;
        // Every known kind, so that rate() works from the first scrape on.
        let mut kinds: std::collections::BTreeMap<&str, u64> =
            Kind::ALL.iter().map(|k| (k.name(), 0)).collect();
        kinds.extend(snap.events.by_kind.iter().map(|(k, n)| (k.as_str(), *n)));
        let kinds = kinds
            .into_iter()
            .map(|(k, n)| (vec![("kind", k.to_string())], n))
            .collect();
        self.counter(
            e,
            "tcptrace_events_total",
            "Events read from the kernel, by kind.",
            kinds,
        )?;
        self.counter(
            e,
            "tcptrace_events_lost_total",
            "Events lost (ring buffer full, or skipped by the kernel and not caught); the other metrics miss them.",
            vec![(vec![], snap.events.lost)],
        )?;
        self.counter(
            e,
            "tcptrace_events_lost_skipped_total",
            "Of the lost events, program runs the kernel skipped (recursion guard) that the catcher did not handle; no setting helps these.",
            vec![(vec![], snap.events.lost_skipped)],
        )?;
        self.counter(
            e,
            "tcptrace_events_undecodable_total",
            "Events that did not decode.",
            vec![(vec![], snap.events.undecodable)],
        )?;
        // Cumulative like the rest: a counter, though the issue listed a gauge.
        self.counter(
            e,
            "tcptrace_sockets_untracked_total",
            "New sockets not followed because the tracking table was full.",
            vec![(vec![], snap.events.untracked)],
        )?;

        gauge(
            e,
            "tcptrace_sockets",
            "Sockets in a TCP state now.",
            states().map(|(labels, s)| (labels, s.now)),
        )?;
        gauge(
            e,
            "tcptrace_oldest_socket_age_seconds",
            "Time the oldest socket in a TCP state has been in it (at least this when it predates tracing).",
            states().filter_map(|(labels, s)| s.oldest_s.map(|age| (labels, age))),
        )?;
        gauge(
            e,
            "tcptrace_ports_folded",
            "Distinct (port, direction) pairs counted in the port=\"other\" rows because of the port cap.",
            [(vec![], snap.events.folded_ports)],
        )?;
        let queues: Vec<_> = inbound
            .iter()
            .filter_map(|p| p.accept_queue.map(|q| (port_only(p), q)))
            .collect();
        gauge(
            e,
            "tcptrace_accept_queue_length",
            "Connections waiting for accept() on the port's listeners.",
            queues.iter().map(|(labels, q)| (labels.clone(), q.len)),
        )?;
        gauge(
            e,
            "tcptrace_accept_queue_max",
            "Accept queue limit (backlog) of the port's listeners.",
            queues.iter().map(|(labels, q)| (labels.clone(), q.max)),
        )?;
        gauge(
            e,
            "tcptrace_findings",
            "Active findings, 1 each (see the README's Findings section); port is \"other\" for the folded rows and \"all\" (direction too) for host-wide findings.",
            snap.findings.iter().map(|f| (finding_labels(f), 1u32)),
        )
    }
}

/// `rule`, `port`, `direction`, `severity` of a finding. Each rule fires at
/// most once per row, so the label sets are unique.
fn finding_labels(f: &crate::findings::Finding) -> Labels {
    let (port, direction) = match f.direction {
        None => ("all".to_string(), "all".to_string()),
        Some(d) => (
            f.port
                .map_or_else(|| "other".to_string(), |p| p.to_string()),
            d.name().to_string(),
        ),
    };
    vec![
        ("rule", f.rule.name().to_string()),
        ("port", port),
        ("direction", direction),
        ("severity", f.severity.name().to_string()),
    ]
}
