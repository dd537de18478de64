//! The plain-text per-port table: what `watch` prints when stdout is not a
//! terminal, and `watch --once`. Aligned columns, one token per cell (so awk
//! can read it), no colour.

use crate::snapshot::Snapshot;

pub use super::TableOptions;
use super::{
    cells, columns, findings, findings_text, pad, rates_or_average, rows, totals_line, widths,
};

/// The table for `snap`: a totals line, a header, one line per port, then
/// the findings about those ports (`findings: none`, or three lines each).
///
/// Rates (`events/s`, `/s`) are over the time since `prev`; without `prev`
/// they are averages since tracing started, and the totals line says `avg`.
pub fn render_table(snap: &Snapshot, prev: Option<&Snapshot>, opts: &TableOptions) -> String {
    let rates = rates_or_average(prev, snap);
    let columns = columns();
    let body: Vec<_> = rows(snap, &rates, opts)
        .into_iter()
        .map(|row| cells(row, rates.of(row), opts.dwell_state))
        .collect();
    let widths = widths(&columns, &body);

    let mut out = format!(
        "{}  {}  dwell {}\n",
        snap.time,
        totals_line(snap, &rates),
        opts.dwell_state
    );
    let header: Vec<_> = columns.iter().map(|c| (c.header, c.align)).collect();
    push_line(&mut out, &header, &widths);
    for row in &body {
        let cells: Vec<_> = row
            .iter()
            .zip(&columns)
            .map(|(cell, c)| (cell.text.as_str(), c.align))
            .collect();
        push_line(&mut out, &cells, &widths);
    }
    if body.is_empty() {
        out.push_str(super::empty_message(opts));
        out.push('\n');
    }
    out.push_str(&findings_text(&findings(snap, opts)));
    out
}

fn push_line(out: &mut String, cells: &[(&str, super::Align)], widths: &[usize]) {
    let line: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|((text, align), w)| pad(text, *w, *align))
        .collect();
    out.push_str(line.join(" ").trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Direction;
    use crate::tcp::TcpState;
    use crate::view::SortKey;
    use crate::view::fixtures::{incident, later};

    fn line_of<'a>(table: &'a str, start: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting with {start:?} in\n{table}"))
    }

    fn tokens(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn header_line_shows_totals_and_lost() {
        let t = render_table(&incident(), None, &TableOptions::default());
        let first = t.lines().next().unwrap();
        assert_eq!(
            first,
            "2024-05-01T12:00:00Z  up 1h00m  events 36000 (10/s avg)  LOST 7  untracked 3  \
             folded ports 12  sockets 480  dwell ESTABLISHED"
        );
        let header = t.lines().nth(1).unwrap();
        assert_eq!(
            tokens(header),
            [
                "PORT",
                "DIR",
                "LISTEN",
                "SYN_S",
                "SYN_R",
                "ESTAB",
                "FIN_W1",
                "FIN_W2",
                "TIME_W",
                "CLOSE_W",
                "LAST_ACK",
                "CLOSING",
                "TRANS",
                "/s",
                "p50",
                "p99",
                "max",
                "oldest",
                "SA_RETX",
                "RST_OUT",
                "RST_IN",
                "RST_REASON"
            ]
        );
        for line in t.lines() {
            assert!(line.chars().count() <= 160, "too wide: {line}");
        }
    }

    #[test]
    fn lost_zero_is_still_shown() {
        let mut s = incident();
        s.events.lost = 0;
        let t = render_table(&s, None, &TableOptions::default());
        assert!(
            t.lines().next().unwrap().contains("  LOST 0  untracked 3"),
            "{t}"
        );
    }

    #[test]
    fn rows_have_exact_numbers_and_lower_bounds() {
        let opts = TableOptions {
            dwell_state: TcpState::CloseWait,
            ..TableOptions::default()
        };
        let t = render_table(&incident(), None, &opts);
        assert!(t.starts_with("2024") && t.lines().next().unwrap().ends_with("CLOSE_WAIT"));
        // 8080 in: listening with 3 of 128 queued, 312 in CLOSE_WAIT, the
        // oldest 41 minutes or more (it predates tracing).
        assert_eq!(
            tokens(line_of(&t, "8080")),
            [
                "8080", "in", "3/128", "0", "2", "40", "0", "0", "0", "312", "1", "0", "9000",
                "2.5", "2.0s", "9m05s", "41m", "≥41m", "4", "0", "1", "-"
            ]
        );
        // 9 in: nothing listens, 20 resets for NO_SOCKET.
        assert_eq!(
            tokens(line_of(&t, "9 ")),
            [
                "9",
                "in",
                "-",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "-",
                "-",
                "-",
                "-",
                "0",
                "20",
                "0",
                "NO_SOCKET"
            ]
        );
        // 5432 out: a client pool, TIME_WAIT from our active closes.
        let pg = tokens(line_of(&t, "5432"));
        assert_eq!(&pg[..3], ["5432", "out", "-"]);
        assert_eq!(pg[5], "16");
        assert_eq!(pg[8], "57");
        // The folded row.
        assert_eq!(&tokens(line_of(&t, "other"))[..2], ["other", "in"]);
        // Columns are aligned: every 8080 cell ends where its header ends.
        let header = t.lines().nth(1).unwrap();
        let row = line_of(&t, "8080");
        let end = header.find("CLOSE_W").unwrap() + "CLOSE_W".len();
        assert_eq!(&row[end - 3..end], "312", "{header}\n{row}");
    }

    #[test]
    fn dwell_columns_follow_the_dwell_state() {
        let t = render_table(&incident(), None, &TableOptions::default());
        let row = tokens(line_of(&t, "5432"));
        // ESTABLISHED on 5432 out: p50 1.5s, p99 12s, max 30s, oldest exact 2h05m.
        assert_eq!(&row[14..18], ["1.5s", "12s", "30s", "2h05m"]);
    }

    #[test]
    fn rates_over_the_interval_since_prev() {
        let t = render_table(&later(), Some(&incident()), &TableOptions::default());
        assert!(t.contains("events 36050 (25/s last 2.0s)"), "{t}");
        // 8080: 9000 -> 9050 transitions in 2 s.
        assert_eq!(tokens(line_of(&t, "8080"))[13], "25");
        // 443 is new in `later`: counted from 0, 8 transitions in 2 s.
        assert_eq!(tokens(line_of(&t, "443"))[13], "4.0");
    }

    #[test]
    fn sort_order_and_reverse_keep_other_last() {
        let order = |opts: &TableOptions| -> Vec<String> {
            render_table(&incident(), None, opts)
                .lines()
                .skip(2)
                .take_while(|l| !l.starts_with("findings:"))
                .map(|l| tokens(l)[0].to_string())
                .collect()
        };
        let mut opts = TableOptions::default();
        assert_eq!(order(&opts), ["9", "5432", "8080", "other"]);
        opts.sort = SortKey::Now(TcpState::CloseWait);
        assert_eq!(order(&opts), ["8080", "9", "5432", "other"]);
        opts.sort = SortKey::ResetsSent;
        assert_eq!(order(&opts), ["9", "5432", "8080", "other"]);
        opts.reverse = true;
        assert_eq!(order(&opts), ["8080", "5432", "9", "other"]);
        opts.sort = SortKey::Port;
        assert_eq!(order(&opts), ["8080", "5432", "9", "other"]);
    }

    /// After the rows: the findings about them, three lines each.
    #[test]
    fn findings_follow_the_rows() {
        let t = render_table(&incident(), None, &TableOptions::default());
        let lines: Vec<&str> = t.lines().collect();
        let at = lines.iter().position(|l| *l == "findings: 2").unwrap();
        assert!(lines[at - 1].starts_with("other"), "{t}");
        assert_eq!(
            lines[at + 1],
            "  CRIT :8080 in close_wait_leak: 312 in CLOSE_WAIT now, oldest ≥41m; 838 CLOSE_WAIT -> LAST_ACK \
             in 1h00m (p99 9m05s); owner java[4242]"
        );
        assert!(
            lines[at + 2] == "       cause: java[4242] does not close() after the peer's FIN",
            "{t}"
        );
        assert!(
            lines[at + 3].starts_with("       next:  fix its read() == 0 and error paths"),
            "{t}"
        );
        assert!(
            lines[at + 4].starts_with("  WARN all ports lost_events: 7 events lost"),
            "{t}"
        );
        assert_eq!(lines.len(), at + 7, "{t}");
        // Only the findings about the rows shown, and the host-wide ones.
        let out = TableOptions {
            direction: Some(Direction::Out),
            ..TableOptions::default()
        };
        let t = render_table(&incident(), None, &out);
        assert!(
            t.contains("findings: 1\n  WARN all ports lost_events"),
            "{t}"
        );
        assert!(!t.contains("close_wait_leak"), "{t}");
        let mut calm = incident();
        calm.findings.clear();
        let t = render_table(&calm, None, &TableOptions::default());
        assert!(t.ends_with("\nfindings: none\n"), "{t}");
        let none = TableOptions {
            ports: vec![1],
            ..TableOptions::default()
        };
        let t = render_table(&incident(), None, &none);
        assert!(t.contains("(no ports match)\nfindings: 1\n"), "{t}");
        let idle = render_table(&Snapshot::default(), None, &TableOptions::default());
        assert!(idle.contains("(no TCP activity seen yet)\n"), "{idle}");
    }

    #[test]
    fn filters_by_port_and_direction() {
        let body = |opts: &TableOptions| -> Vec<String> {
            render_table(&incident(), None, opts)
                .lines()
                .skip(2)
                .take_while(|l| !l.starts_with("findings:"))
                .map(|l| tokens(l)[..2].join(" "))
                .collect()
        };
        let ports = TableOptions {
            ports: vec![8080, 5432],
            ..TableOptions::default()
        };
        assert_eq!(body(&ports), ["5432 out", "8080 in"]);
        let out = TableOptions {
            direction: Some(Direction::Out),
            ..TableOptions::default()
        };
        assert_eq!(body(&out), ["5432 out"]);
        let none = TableOptions {
            ports: vec![1],
            ..TableOptions::default()
        };
        assert_eq!(body(&none), ["(no ports"]);
    }
}
