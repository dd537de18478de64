//! The details of one port in the live view: dwell per state with its shape,
//! the histogram of one state, handshakes, resets and the oldest sockets.
//!
//! Each section is built as plain lines first (tested as text), then drawn.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

use super::human::{age, bar, duration_us, rate, spark, width};
use super::{
    Align, PortRates, Rates, RowKey, STATES, findings_of, pad, port_label, resets_received,
    severity_tag,
};
use crate::findings::Severity;
use crate::snapshot::{Bucket, Dwell, PortSnapshot, Snapshot};
use crate::tcp::TcpState;

/// One line of a section and how to draw it.
type Styled = (String, Style);

fn title(s: impl Into<String>) -> Styled {
    (s.into(), Style::new().add_modifier(Modifier::BOLD))
}

fn plain(s: impl Into<String>) -> Styled {
    (s.into(), Style::new())
}

pub(super) fn render(
    frame: &mut Frame,
    area: Rect,
    snap: &Snapshot,
    rates: &Rates,
    (port, dir): RowKey,
    dwell_state: TcpState,
) {
    let Some(row) = snap
        .ports
        .iter()
        .find(|p| (p.port, p.direction) == (port, dir))
    else {
        let msg = format!(
            "port {} {} is not in the latest snapshot (gone, or folded into other). Esc: back",
            port_label(port),
            dir.name()
        );
        frame.render_widget(Paragraph::new(msg), area);
        return;
    };
    let rates = rates.of(row);
    let found = findings_section(snap, (port, dir));
    let dwell = dwell_section(row, dwell_state);
    let oldest = oldest_section(row);
    let [sum, found_area, dwell_area, mid, oldest_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(found.len() as u16),
        Constraint::Length(dwell.len() as u16),
        Constraint::Min(3),
        Constraint::Length(oldest.len() as u16),
    ])
    .spacing(1)
    .areas(area);
    let [hist, hands, resets] = Layout::horizontal([Constraint::Fill(1); 3])
        .spacing(2)
        .areas(mid);
    draw(frame, sum, vec![title(summary(row, rates))]);
    draw(frame, found_area, found);
    draw(frame, dwell_area, dwell);
    draw(
        frame,
        hist,
        histogram_section(row, dwell_state, usize::from(hist.width)),
    );
    draw(
        frame,
        hands,
        handshake_section(row, rates, usize::from(hands.width)),
    );
    draw(frame, resets, reset_section(row, rates));
    draw(frame, oldest_area, oldest);
}

fn draw(frame: &mut Frame, area: Rect, lines: Vec<Styled>) {
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|(s, style)| Line::styled(s, style))
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}

/// Aligned columns: a header and rows, each row as long as the header.
fn table(headers: &[(&str, Align)], rows: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, (h, _))| rows.iter().map(|r| width(&r[i])).fold(width(h), usize::max))
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(headers)
            .zip(&widths)
            .map(|((c, (_, align)), w)| pad(c, *w, *align))
            .collect();
        padded.join(" ").trim_end().to_string()
    };
    let mut out = vec![line(headers.iter().map(|(h, _)| *h).collect())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// How a finding's severity is drawn: critical red, warning yellow, info cyan.
pub(super) fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Critical => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Severity::Warning => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        Severity::Info => Style::new().fg(Color::Cyan),
    }
}

/// The findings of the port with their evidence, cause and next step.
pub(super) fn findings_section(snap: &Snapshot, row: RowKey) -> Vec<Styled> {
    let found = findings_of(snap, row);
    if found.is_empty() {
        return vec![(
            "no findings for this port".to_string(),
            Style::new().add_modifier(Modifier::DIM),
        )];
    }
    let mut out = vec![title(format!("findings {}", found.len()))];
    for f in found {
        out.push((
            format!("{} {}: {}", severity_tag(f.severity), f.rule, f.evidence),
            severity_style(f.severity),
        ));
        out.push(plain(format!("     cause: {}", f.cause)));
        out.push(plain(format!("     next:  {}", f.action)));
    }
    out
}

pub(super) fn summary(row: &PortSnapshot, r: PortRates) -> String {
    let listen = match (row.accept_queue, row.listening) {
        (Some(q), _) => format!("listening, accept queue {}/{}", q.len, q.max),
        (None, true) => "listening".to_string(),
        (None, false) => "not listening".to_string(),
    };
    format!(
        "port {} {}  {listen}  transitions {} ({}/s)  SYN-ACK retrans {} ({}/s)  resets sent {} ({}/s)  \
         received {} ({}/s)  retransmits {}",
        port_label(row.port),
        row.direction.name(),
        row.transitions,
        rate(r.transitions),
        row.synack_retrans,
        rate(r.synack_retrans),
        row.resets_sent_total(),
        rate(r.resets_sent),
        resets_received(row),
        rate(r.resets_received),
        row.retransmits,
    )
}

/// The states of `row` in the order a connection meets them, then the rest.
fn states_of(row: &PortSnapshot) -> Vec<TcpState> {
    let mut out: Vec<TcpState> = STATES
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| row.states.contains_key(s))
        .collect();
    out.extend(
        row.states
            .keys()
            .filter(|s| !out.contains(s))
            .copied()
            .collect::<Vec<_>>(),
    );
    out
}

/// Every state with its counts, percentiles, the shape of its dwell on a
/// shared axis (one column per bucket, so shapes compare across states) and
/// where sockets went next. The dwell state is highlighted.
pub(super) fn dwell_section(row: &PortSnapshot, dwell_state: TcpState) -> Vec<Styled> {
    let mut axis: Vec<u64> = row
        .states
        .values()
        .filter_map(|s| s.dwell.as_ref())
        .flat_map(|d| d.buckets.iter().map(|b| b.le_us))
        .collect();
    axis.sort_unstable();
    axis.dedup();
    let headers = [
        ("STATE", Align::Left),
        ("NOW", Align::Right),
        ("OLDEST", Align::Right),
        ("ENTERED", Align::Right),
        ("SAMPLES", Align::Right),
        ("UNKNOWN", Align::Right),
        ("p50", Align::Right),
        ("p90", Align::Right),
        ("p99", Align::Right),
        ("max", Align::Right),
        ("SHAPE", Align::Left),
        ("NEXT", Align::Left),
    ];
    let order = states_of(row);
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|st| {
            let s = &row.states[st];
            let mut cells = vec![
                st.to_string(),
                s.now.to_string(),
                s.oldest_s
                    .map_or_else(|| "-".into(), |o| age(o, s.oldest_exact)),
                s.entered.to_string(),
                s.dwell.as_ref().map_or(0, |d| d.count).to_string(),
                s.dwell_unknown.to_string(),
            ];
            match &s.dwell {
                Some(d) => cells.extend([d.p50_us, d.p90_us, d.p99_us, d.max_us].map(duration_us)),
                None => cells.extend(std::iter::repeat_n("-".to_string(), 4)),
            }
            cells.push(
                s.dwell
                    .as_ref()
                    .map_or_else(String::new, |d| shape(d, &axis)),
            );
            let mut next: Vec<_> = s.exits.iter().collect();
            next.sort_by(|a, b| b.1.cmp(a.1));
            let next: Vec<String> = next.iter().map(|(st, n)| format!("{st} {n}")).collect();
            cells.push(next.join(", "));
            cells
        })
        .collect();
    let range = match (axis.first(), axis.last()) {
        (Some(lo), Some(hi)) => format!(", shape ≤{} … ≤{}", duration_us(*lo), duration_us(*hi)),
        _ => String::new(),
    };
    let mut out = vec![title(format!(
        "time in state (dwell of stays that ended; OLDEST: sockets in it now{range})"
    ))];
    for (i, line) in table(&headers, &rows).into_iter().enumerate() {
        let selected = i > 0 && order[i - 1] == dwell_state;
        let style = if selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        out.push((line, style));
    }
    out
}

fn shape(d: &Dwell, axis: &[u64]) -> String {
    let max = d.buckets.iter().map(|b| b.count).max().unwrap_or(0);
    axis.iter()
        .map(|le| {
            let n = d
                .buckets
                .iter()
                .find(|b| b.le_us == *le)
                .map_or(0, |b| b.count);
            spark(n, max)
        })
        .collect()
}

/// Horizontal bars, one per non-empty bucket, fitting `cols` columns.
pub(super) fn histogram(buckets: &[Bucket], cols: usize) -> Vec<String> {
    let labels: Vec<String> = buckets
        .iter()
        .map(|b| format!("≤{}", duration_us(b.le_us)))
        .collect();
    let label_w = labels.iter().map(|l| width(l)).max().unwrap_or(0);
    let count_w = buckets
        .iter()
        .map(|b| b.count.to_string().len())
        .max()
        .unwrap_or(0);
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    let bar_w = cols.saturating_sub(label_w + count_w + 2).max(1);
    buckets
        .iter()
        .zip(&labels)
        .map(|(b, l)| {
            format!(
                "{} {} {}",
                pad(l, label_w, Align::Right),
                pad(&bar(b.count, max, bar_w), bar_w, Align::Left),
                pad(&b.count.to_string(), count_w, Align::Right)
            )
        })
        .collect()
}

pub(super) fn histogram_section(row: &PortSnapshot, st: TcpState, cols: usize) -> Vec<Styled> {
    let mut out = vec![title(format!("{st} dwell histogram (d/D: state)"))];
    match row.states.get(&st).and_then(|s| s.dwell.as_ref()) {
        Some(d) => out.extend(histogram(&d.buckets, cols).into_iter().map(plain)),
        None => out.push(plain(format!("no completed stays in {st}"))),
    }
    out
}

pub(super) fn handshake_section(row: &PortSnapshot, r: PortRates, cols: usize) -> Vec<Styled> {
    let h = &row.handshakes;
    let mut out = vec![
        title("handshakes (passive opens; time: SYN-ACK to ACK)"),
        plain(format!(
            "completed {}  failed {}  SYN-ACK retrans {} ({}/s)",
            h.completed,
            h.failed,
            row.synack_retrans,
            rate(r.synack_retrans)
        )),
        plain(match row.accept_queue {
            Some(q) => format!("accept queue {}/{}", q.len, q.max),
            None if row.listening => "accept queue unknown".to_string(),
            None => "no listener".to_string(),
        }),
    ];
    if let Some(t) = &h.time {
        out.push(plain(format!(
            "time p50 {}  p90 {}  p99 {}  max {}",
            duration_us(t.p50_us),
            duration_us(t.p90_us),
            duration_us(t.p99_us),
            duration_us(t.max_us)
        )));
        out.extend(histogram(&t.buckets, cols).into_iter().map(plain));
    }
    out
}

pub(super) fn reset_section(row: &PortSnapshot, r: PortRates) -> Vec<Styled> {
    let mut out = vec![title(format!(
        "resets sent {} ({}/s)",
        row.resets_sent_total(),
        rate(r.resets_sent)
    ))];
    if !row.resets_sent.is_empty() {
        let rows: Vec<Vec<String>> = row
            .resets_sent
            .iter()
            .map(|c| {
                let before = c
                    .state_before
                    .map_or_else(|| "no socket".into(), |s| s.to_string());
                vec![c.reason.clone(), before, c.count.to_string()]
            })
            .collect();
        let headers = [
            ("REASON", Align::Left),
            ("BEFORE", Align::Left),
            ("COUNT", Align::Right),
        ];
        out.extend(table(&headers, &rows).into_iter().map(plain));
    }
    out.push(title(format!(
        "resets received {} ({}/s)",
        resets_received(row),
        rate(r.resets_received)
    )));
    if !row.resets_received.is_empty() {
        let rows: Vec<Vec<String>> = row
            .resets_received
            .iter()
            .map(|(st, n)| vec![st.to_string(), n.to_string()])
            .collect();
        let headers = [("IN STATE", Align::Left), ("COUNT", Align::Right)];
        out.extend(table(&headers, &rows).into_iter().map(plain));
    }
    out
}

pub(super) fn oldest_section(row: &PortSnapshot) -> Vec<Styled> {
    let mut out = vec![title(
        "oldest sockets now (not LISTEN; ≥: in the state since before tracing)",
    )];
    if row.oldest.is_empty() {
        out.push(plain("none"));
        return out;
    }
    let headers = [
        ("STATE", Align::Left),
        ("AGE", Align::Right),
        ("LOCAL", Align::Left),
        ("REMOTE", Align::Left),
        ("PID", Align::Right),
        ("COMM", Align::Left),
        ("NETNS", Align::Right),
    ];
    let rows: Vec<Vec<String>> = row
        .oldest
        .iter()
        .map(|s| {
            vec![
                s.state.to_string(),
                age(s.age_s, s.exact),
                s.local.clone(),
                s.remote.clone(),
                s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                s.comm.clone().unwrap_or_else(|| "-".into()),
                s.netns.to_string(),
            ]
        })
        .collect();
    out.extend(table(&headers, &rows).into_iter().map(plain));
    out
}
