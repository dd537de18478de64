//! The live full-screen view of `tcptrace watch`: a pure [`App`] state that
//! takes snapshots and keys, [`render`] that draws it into a ratatui frame,
//! and [`run_tui`], the loop that ties both to a terminal.

use std::fmt::Write as _;
use std::future::Future;

use anyhow::{Context, Result};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, TableState};

use super::terminal::{Input, TerminalGuard};
use super::{
    RowKey, STATES, SortKey, TableOptions, Tone, cells, columns, drill, findings, key, pad,
    port_label, rates_or_average, rows, severity_tag, totals, widths,
};
use crate::snapshot::{Direction, Snapshot};

/// What the caller does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// Everything the live view shows, changed only by snapshots and keys.
#[derive(Debug, Default)]
pub struct App {
    cur: Option<Snapshot>,
    prev: Option<Snapshot>,
    rates: super::Rates,
    opts: TableOptions,
    /// The selected row, by identity, so it stays on its port when rows move.
    selected: Option<RowKey>,
    /// The port filter being typed, while `/` is active.
    filter_input: Option<String>,
    /// The port whose details are shown.
    drill: Option<RowKey>,
    help: bool,
}

impl App {
    /// A view starting with `opts` (from the command line).
    pub fn new(opts: TableOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    pub fn options(&self) -> &TableOptions {
        &self.opts
    }
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.cur.as_ref()
    }
    pub fn selected(&self) -> Option<RowKey> {
        self.selected
    }
    pub fn drill(&self) -> Option<RowKey> {
        self.drill
    }
    /// The port filter being typed, if `/` is active.
    pub fn filter_input(&self) -> Option<&str> {
        self.filter_input.as_deref()
    }

    /// A new snapshot; the previous one becomes the base for rates.
    pub fn on_snapshot(&mut self, s: Snapshot) {
        self.reorder(|app| {
            app.prev = app.cur.replace(s);
            app.rates = rates_or_average(
                app.prev.as_ref(),
                app.cur.as_ref().unwrap_or(&Snapshot::default()),
            );
        });
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Control {
        // Terminals with the kitty protocol also report releases.
        if key.kind == KeyEventKind::Release {
            return Control::Continue;
        }
        // Raw mode turns Ctrl-C into a key: it must quit from anywhere.
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Control::Quit;
        }
        if self.filter_input.is_some() {
            self.on_filter_key(key.code);
            return Control::Continue;
        }
        match key.code {
            KeyCode::Esc if self.help => self.help = false,
            KeyCode::Esc | KeyCode::Backspace if self.drill.is_some() => self.drill = None,
            KeyCode::Char('q') | KeyCode::Esc => return Control::Quit,
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_by(isize::MAX / 2),
            KeyCode::Char('s' | '>') => self.reorder(|a| a.opts.sort = a.opts.sort.cycle(1)),
            KeyCode::Char('S' | '<') => self.reorder(|a| a.opts.sort = a.opts.sort.cycle(-1)),
            KeyCode::Char('r') => self.reorder(|a| a.opts.reverse = !a.opts.reverse),
            KeyCode::Char('d') | KeyCode::Tab => self.cycle_dwell(1),
            KeyCode::Char('D') | KeyCode::BackTab => self.cycle_dwell(-1),
            KeyCode::Char('i') => self.reorder(|a| {
                a.opts.direction = match a.opts.direction {
                    None => Some(Direction::In),
                    Some(Direction::In) => Some(Direction::Out),
                    Some(Direction::Out) => None,
                };
            }),
            KeyCode::Char('/') => {
                let ports: Vec<String> = self.opts.ports.iter().map(u16::to_string).collect();
                self.filter_input = Some(ports.join(","));
            }
            KeyCode::Enter => self.drill = self.selected,
            KeyCode::Char('?') => self.help = !self.help,
            _ => {}
        }
        Control::Continue
    }

    fn on_filter_key(&mut self, code: KeyCode) {
        let Some(input) = self.filter_input.as_mut() else {
            return;
        };
        match code {
            KeyCode::Char(c) if c.is_ascii_digit() || c == ',' || c == ' ' => input.push(c),
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Enter => {
                // Whatever is not a port (empty, 70000) is dropped, not an error.
                let ports = input
                    .split([',', ' '])
                    .filter_map(|p| p.parse::<u16>().ok())
                    .collect();
                self.filter_input = None;
                self.reorder(|a| a.opts.ports = ports);
            }
            KeyCode::Esc => {
                self.filter_input = None;
                self.reorder(|a| a.opts.ports.clear());
            }
            _ => {}
        }
    }

    /// The keys of the rows shown, in order.
    fn visible(&self) -> Vec<RowKey> {
        self.cur.as_ref().map_or_else(Vec::new, |s| {
            rows(s, &self.rates, &self.opts)
                .into_iter()
                .map(key)
                .collect()
        })
    }

    /// Applies a change that may reorder or remove rows, keeping the
    /// selection on its port, or at the same position if the port is gone.
    fn reorder(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.visible();
        let at = self
            .selected
            .and_then(|k| before.iter().position(|x| *x == k))
            .unwrap_or(0);
        change(self);
        let after = self.visible();
        if !self.selected.is_some_and(|k| after.contains(&k)) {
            self.selected = after.get(at.min(after.len().saturating_sub(1))).copied();
        }
    }

    fn move_by(&mut self, delta: isize) {
        let visible = self.visible();
        if visible.is_empty() {
            return;
        }
        let at = self
            .selected
            .and_then(|k| visible.iter().position(|x| *x == k))
            .unwrap_or(0);
        let to = at.saturating_add_signed(delta).min(visible.len() - 1);
        self.selected = Some(visible[to]);
        // In the details, up/down step through the ports.
        if self.drill.is_some() {
            self.drill = self.selected;
        }
    }

    fn cycle_dwell(&mut self, step: isize) {
        let i = STATES
            .iter()
            .position(|(s, _)| *s == self.opts.dwell_state)
            .map_or(0, |i| i.cast_signed() + step);
        let next = STATES[i.rem_euclid(STATES.len().cast_signed()).cast_unsigned()].0;
        // Sorting by dwell or age reorders with the state.
        self.reorder(|a| a.opts.dwell_state = next);
    }
}

/// Draws the whole screen: header, the table or one port's details, footer.
pub fn render(frame: &mut Frame, app: &App) {
    let footer = footer_lines(app);
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(footer.len() as u16),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(app)), head);
    frame.render_widget(
        Paragraph::new(footer).style(Style::new().add_modifier(Modifier::DIM)),
        foot,
    );
    match (&app.cur, app.drill) {
        (None, _) => frame.render_widget(Paragraph::new("waiting for the first snapshot…"), body),
        (Some(snap), Some(port)) => {
            drill::render(frame, body, snap, &app.rates, port, app.opts.dwell_state);
        }
        (Some(snap), None) => {
            // Right under the table's rows (header and rows, or its one-line
            // "no ports match"), the table taking what is left when long.
            let panel = findings_panel(snap, &app.opts, body.height / 3, body.width);
            let table_lines = rows(snap, &app.rates, &app.opts).len().max(1) + 1;
            let [table, below, _] = Layout::vertical([
                Constraint::Max(u16::try_from(table_lines).unwrap_or(u16::MAX)),
                Constraint::Length(panel.len() as u16),
                Constraint::Fill(1),
            ])
            .spacing(1)
            .areas(body);
            render_table(frame, table, snap, app);
            frame.render_widget(Paragraph::new(panel), below);
        }
    }
}

/// Findings under the table at most (fewer on a small screen).
const FINDINGS_SHOWN: usize = 5;

/// The findings about the rows shown, one line each: severity (coloured),
/// where, and the cause → the next step, cut with `…` to `width` columns
/// (the details of the port have them whole). At most `max_lines` lines.
fn findings_panel(
    snap: &Snapshot,
    opts: &TableOptions,
    max_lines: u16,
    width: u16,
) -> Vec<Line<'static>> {
    let all = findings(snap, opts);
    let dim = Style::new().add_modifier(Modifier::DIM);
    if all.is_empty() {
        return vec![Line::styled("findings: none", dim)];
    }
    let room = usize::from(max_lines)
        .saturating_sub(2)
        .clamp(1, FINDINGS_SHOWN);
    let mut out = vec![Line::styled(
        format!("findings {} (Enter on a row: evidence)", all.len()),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    for f in all.iter().take(room) {
        let tag = severity_tag(f.severity);
        let text = format!(" {:<10} {} → {}", f.location(), f.cause, f.action);
        let room = usize::from(width).saturating_sub(tag.len());
        let text = if text.chars().count() > room {
            let mut cut: String = text.chars().take(room.saturating_sub(1)).collect();
            cut.push('…');
            cut
        } else {
            text
        };
        out.push(Line::from(vec![
            Span::styled(tag, drill::severity_style(f.severity)),
            Span::raw(text),
        ]));
    }
    if all.len() > room {
        out.push(Line::styled(format!("… {} more", all.len() - room), dim));
    }
    out
}

fn header_lines(app: &App) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut first = vec![Span::styled("tcptrace", bold)];
    if let Some(snap) = &app.cur {
        let [before, lost, after] = totals(snap, &app.rates);
        let lost_style = if snap.events.lost > 0 {
            bold.fg(Color::White).bg(Color::Red)
        } else {
            Style::new()
        };
        first.extend([
            Span::raw(format!("  {}  {before}  ", snap.time)),
            Span::styled(lost, lost_style),
            Span::raw(format!("  {after}")),
        ]);
    }
    let o = &app.opts;
    let filter = match &app.filter_input {
        Some(typing) => format!("{typing}▏ (Enter apply, Esc clear)"),
        None if o.ports.is_empty() => "all".to_string(),
        None => o
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
    };
    let mut status = format!(
        "sort {} {}  dwell {}  ports {filter}  dir {}",
        o.sort,
        if (o.sort == SortKey::Port) == o.reverse {
            "↓"
        } else {
            "↑"
        },
        o.dwell_state,
        o.direction.map_or("all", Direction::name),
    );
    if let Some((port, dir)) = app.drill {
        let _ = write!(
            status,
            "  │ details of port {} {}",
            port_label(port),
            dir.name()
        );
    }
    vec![Line::from(first), Line::from(status)]
}

fn footer_lines(app: &App) -> Vec<Line<'static>> {
    if app.help {
        return [
            "↑/↓ j/k PgUp/PgDn g/G  select a row (in details: the previous/next port)",
            "Enter  details of the selected port      Esc/Backspace  back to the table",
            "s/S  > <  sort by the next/previous column      r  reverse the sort",
            "d/D  Tab/Shift-Tab  the state whose dwell and oldest age are shown",
            "/  type ports to show (8080,443), Enter applies, Esc clears      i  direction: all, in, out",
            "?  hide this help      q  Esc  Ctrl-C  quit",
        ]
        .map(Line::from)
        .to_vec();
    }
    let keys = if app.drill.is_some() {
        "Esc back  ↑↓ other port  d/D histogram state  q quit  ? help"
    } else {
        "↑↓ select  Enter details  s/S sort  r reverse  d/D dwell state  / ports  i in/out  q quit  ? help"
    };
    vec![Line::from(keys)]
}

/// The per-port table, with the same columns as the text table.
fn render_table(frame: &mut Frame, area: Rect, snap: &Snapshot, app: &App) {
    let cols = columns();
    let shown = rows(snap, &app.rates, &app.opts);
    let body: Vec<_> = shown
        .iter()
        .map(|row| cells(row, app.rates.of(row), app.opts.dwell_state))
        .collect();
    let widths = widths(&cols, &body);
    let header = Row::new(cols.iter().zip(&widths).map(|(c, w)| {
        let style = if c.sort == Some(app.opts.sort) {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        ratatui::widgets::Cell::from(pad(c.header, *w, c.align)).style(style)
    }));
    let lines = body.iter().map(|cells| {
        Row::new(cells.iter().zip(&cols).zip(&widths).map(|((cell, c), w)| {
            let style = match cell.tone {
                Tone::Normal => Style::new(),
                Tone::Quiet => Style::new().add_modifier(Modifier::DIM),
                Tone::Alert => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            };
            ratatui::widgets::Cell::from(pad(&cell.text, *w, c.align)).style(style)
        }))
    });
    let constraints = widths
        .iter()
        .map(|w| Constraint::Length(u16::try_from(*w).unwrap_or(u16::MAX)));
    let table = Table::new(lines, constraints)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let selected = app
        .selected
        .and_then(|k| shown.iter().position(|r| key(r) == k));
    let mut state = TableState::new().with_selected(selected);
    if shown.is_empty() {
        frame.render_widget(Paragraph::new(crate::view::empty_message(&app.opts)), area);
    } else {
        frame.render_stateful_widget(table, area, &mut state);
    }
}

/// Runs the live view until `q`/Ctrl-C, `shutdown` resolves (the caller's
/// SIGINT/SIGTERM), or `snapshots` closes. Takes over the terminal for that
/// time and gives it back on every way out, including errors and panics.
/// Redraws on every snapshot, key and resize.
pub async fn run_tui(
    mut app: App,
    mut snapshots: tokio::sync::mpsc::Receiver<Snapshot>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut term = TerminalGuard::enter().context("set up the terminal")?;
    let mut input = Input::new();
    tokio::pin!(shutdown);
    loop {
        term.draw(|f| render(f, &app)).context("draw")?;
        tokio::select! {
            () = &mut shutdown => break,
            snap = snapshots.recv() => match snap {
                Some(s) => app.on_snapshot(s),
                None => break,
            },
            ev = input.next() => match ev {
                Some(Ok(Event::Key(k))) => {
                    if app.on_key(k) == Control::Quit {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("read terminal input"),
                None => break,
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
