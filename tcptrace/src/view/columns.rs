//! The columns of the per-port table and the cells of a row, shared by the
//! text table and the live view so both show the same numbers the same way.

use super::{PortRates, STATES, SortKey, human, port_label, resets_received, top_reset_reason};
use crate::snapshot::PortSnapshot;
use crate::tcp::TcpState;

/// How a cell's text lines up in its column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// What a renderer may do with a cell: dim it (zero, nothing to see) or
/// draw attention to it (a full accept queue). The text table ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Normal,
    Quiet,
    Alert,
}

/// A column of the per-port table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub header: &'static str,
    pub align: Align,
    /// The sort key this column corresponds to, if any.
    pub sort: Option<SortKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl Cell {
    fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tone: Tone::Normal,
        }
    }

    fn count(n: u64) -> Self {
        Self {
            text: n.to_string(),
            tone: if n == 0 { Tone::Quiet } else { Tone::Normal },
        }
    }

    fn missing() -> Self {
        Self {
            text: "-".to_string(),
            tone: Tone::Quiet,
        }
    }
}

/// The columns of the per-port table. The dwell columns (p50, p99, max,
/// oldest) are about the dwell state, which the header line names.
pub fn columns() -> Vec<Column> {
    let col = |header, align, sort| Column {
        header,
        align,
        sort,
    };
    let mut cols = vec![
        col("PORT", Align::Right, Some(SortKey::Port)),
        col("DIR", Align::Left, None),
        col("LISTEN", Align::Right, Some(SortKey::AcceptQueue)),
    ];
    for (st, header) in STATES {
        cols.push(col(header, Align::Right, Some(SortKey::Now(st))));
    }
    for key in &SortKey::ALL[11..] {
        cols.push(col(key.name(), Align::Right, Some(*key)));
    }
    cols.push(col("RST_REASON", Align::Left, None));
    cols
}

/// The cells of one row, matching [`columns`].
pub fn cells(row: &PortSnapshot, rates: PortRates, dwell_state: TcpState) -> Vec<Cell> {
    let listen = match (row.accept_queue, row.listening) {
        (Some(q), _) => Cell {
            text: format!("{}/{}", q.len, q.max),
            // A full queue drops SYNs or final ACKs: worth a glance.
            tone: if q.len >= q.max && q.max > 0 {
                Tone::Alert
            } else {
                Tone::Normal
            },
        },
        (None, true) => Cell::new("yes"),
        (None, false) => Cell::missing(),
    };
    let mut out = vec![
        Cell::new(port_label(row.port)),
        Cell::new(row.direction.name()),
        listen,
    ];
    out.extend(STATES.iter().map(|(st, _)| Cell::count(row.now(*st))));
    out.push(Cell::count(row.transitions));
    out.push(Cell {
        text: human::rate(rates.transitions),
        tone: if rates.transitions > 0.0 {
            Tone::Normal
        } else {
            Tone::Quiet
        },
    });
    let state = row.states.get(&dwell_state);
    match state.and_then(|s| s.dwell.as_ref()) {
        Some(d) => {
            out.extend([d.p50_us, d.p99_us, d.max_us].map(|us| Cell::new(human::duration_us(us))));
        }
        None => out.extend([Cell::missing(), Cell::missing(), Cell::missing()]),
    }
    out.push(
        match state.and_then(|s| s.oldest_s.map(|o| (o, s.oldest_exact))) {
            Some((s, exact)) => Cell::new(human::age(s, exact)),
            None => Cell::missing(),
        },
    );
    out.push(Cell::count(row.synack_retrans));
    out.push(Cell::count(row.resets_sent_total()));
    out.push(Cell::count(resets_received(row)));
    out.push(top_reset_reason(row).map_or_else(Cell::missing, Cell::new));
    out
}

/// The widths that fit each column's header and every row's cell.
pub fn widths(columns: &[Column], rows: &[Vec<Cell>]) -> Vec<usize> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|cell| human::width(&cell.text))
                .fold(human::width(c.header), usize::max)
        })
        .collect()
}

/// `text` padded to `width` on the side `align` says.
pub fn pad(text: &str, width: usize, align: Align) -> String {
    let fill = " ".repeat(width.saturating_sub(human::width(text)));
    match align {
        Align::Left => format!("{text}{fill}"),
        Align::Right => format!("{fill}{text}"),
    }
}
