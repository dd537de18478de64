//! Tests of the live view: what it draws on a 160x40 screen for a known
//! snapshot, and how keys change its state.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;

use super::*;
use crate::tcp::TcpState;
use crate::view::fixtures::{incident, later};

fn press(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn chars(app: &mut App, s: &str) {
    for c in s.chars() {
        assert_eq!(app.on_key(press(KeyCode::Char(c))), Control::Continue);
    }
}

fn app() -> App {
    let mut app = App::new(TableOptions::default());
    app.on_snapshot(incident());
    app.on_snapshot(later());
    app
}

fn draw(app: &App) -> Buffer {
    let mut term = Terminal::new(TestBackend::new(160, 40)).unwrap();
    term.draw(|f| render(f, app)).unwrap();
    term.backend().buffer().clone()
}

fn lines(buf: &Buffer) -> Vec<String> {
    let w = usize::from(buf.area.width);
    buf.content()
        .chunks(w)
        .map(|row| {
            row.iter()
                .map(ratatui::buffer::Cell::symbol)
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

fn screen(app: &App) -> String {
    lines(&draw(app)).join("\n")
}

fn line_with<'a>(screen: &'a [String], needle: &str) -> &'a str {
    screen
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} on screen:\n{}", screen.join("\n")))
}

fn tokens(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

#[test]
fn table_view_shows_totals_and_rows() {
    let app = app();
    let buf = draw(&app);
    let screen = lines(&buf);
    assert!(screen[0].starts_with("tcptrace  2024-05-01T12:00:02Z  up 1h00m  events 36050 (25/s last 2.0s)  LOST 7  untracked 3"),
        "{}", screen[0]);
    assert_eq!(
        screen[1],
        "sort PORT ↑  dwell ESTABLISHED  ports all  dir all"
    );
    assert!(
        screen[2]
            .trim_start()
            .starts_with("PORT DIR LISTEN SYN_S SYN_R ESTAB"),
        "{}",
        screen[2]
    );
    let web = tokens(line_with(&screen, "3/128"));
    assert_eq!(
        web,
        [
            "8080", "in", "3/128", "0", "2", "40", "0", "0", "0", "312", "1", "0", "9050", "25",
            "180ms", "4.0s", "1m01s", "15m", "5", "0", "1", "-"
        ]
    );
    // The port new in the second snapshot, counted from zero: 8 in 2 s.
    assert_eq!(&tokens(line_with(&screen, " 443 "))[12..14], ["8", "4.0"]);
    assert_eq!(tokens(line_with(&screen, "NO_SOCKET"))[..2], ["9", "in"]);
    assert!(
        line_with(&screen, "other")
            .trim_start()
            .starts_with("other in")
    );
    assert!(
        screen[39].starts_with("↑↓ select  Enter details"),
        "{}",
        screen[39]
    );

    // LOST is white on red when events were lost.
    let x = screen[0].find("LOST").unwrap();
    let x = screen[0][..x].chars().count() as u16;
    assert_eq!((buf[(x, 0)].fg, buf[(x, 0)].bg), (Color::White, Color::Red));
    // ... and plain when none were.
    let mut calm = later();
    calm.events.lost = 0;
    let mut app = App::default();
    app.on_snapshot(calm);
    let buf = draw(&app);
    let screen = lines(&buf);
    assert!(screen[0].contains("  LOST 0  untracked 3"), "{}", screen[0]);
    let x = screen[0][..screen[0].find("LOST").unwrap()].chars().count() as u16;
    assert_eq!(buf[(x, 0)].bg, Color::Reset);
}

#[test]
fn waits_for_the_first_snapshot() {
    let s = screen(&App::default());
    assert!(s.contains("waiting for the first snapshot"), "{s}");
}

#[test]
fn sort_keys_cycle_and_reverse() {
    let mut app = app();
    assert_eq!(app.options().sort, SortKey::Port);
    chars(&mut app, "s");
    assert_eq!(app.options().sort, SortKey::AcceptQueue);
    chars(&mut app, "S");
    assert_eq!(app.options().sort, SortKey::Port);
    chars(&mut app, "<");
    assert_eq!(app.options().sort, SortKey::ResetsReceived);
    chars(&mut app, ">>>");
    assert_eq!(app.options().sort, SortKey::Now(TcpState::SynSent));
    chars(&mut app, "r");
    assert!(app.options().reverse);
    assert!(screen(&app).contains("sort SYN_S ↑"));
}

#[test]
fn selection_stays_on_its_port_when_rows_move() {
    let mut app = app();
    // Rows by port: 9, 443, 5432, 8080, other.
    assert_eq!(app.selected(), Some((Some(9), Direction::In)));
    app.on_key(press(KeyCode::Down));
    chars(&mut app, "jj");
    assert_eq!(app.selected(), Some((Some(8080), Direction::In)));
    chars(&mut app, "k");
    assert_eq!(app.selected(), Some((Some(5432), Direction::Out)));
    chars(&mut app, "j");
    // Sorting by CLOSE_WAIT puts 8080 first; the selection follows it.
    app.opts.sort = SortKey::Now(TcpState::CloseWait);
    app.reorder(|_| {});
    let s = lines(&draw(&app));
    let first = tokens(&s[3]);
    assert_eq!(first[0], "8080");
    assert_eq!(app.selected(), Some((Some(8080), Direction::In)));
    app.on_snapshot(later());
    assert_eq!(app.selected(), Some((Some(8080), Direction::In)));
    app.on_key(press(KeyCode::End));
    assert_eq!(app.selected(), Some((None, Direction::In)));
    app.on_key(press(KeyCode::Home));
    assert_eq!(app.selected(), Some((Some(8080), Direction::In)));
}

#[test]
fn port_filter_is_typed_applied_and_cleared() {
    let mut app = app();
    chars(&mut app, "/80x81");
    app.on_key(press(KeyCode::Backspace));
    // `q` is not a digit: ignored while typing, not a quit.
    chars(&mut app, "q,443");
    assert_eq!(app.filter_input(), Some("808,443"));
    app.on_key(press(KeyCode::Backspace));
    app.on_key(press(KeyCode::Backspace));
    chars(&mut app, "43");
    assert!(screen(&app).contains("ports 808,443▏ (Enter apply, Esc clear)"));
    app.on_key(press(KeyCode::Enter));
    assert_eq!(app.filter_input(), None);
    assert_eq!(app.options().ports, [808, 443]);
    assert_eq!(app.selected(), Some((Some(443), Direction::In)));
    let s = lines(&draw(&app));
    assert_eq!(
        s[1],
        "sort PORT ↑  dwell ESTABLISHED  ports 808,443  dir all"
    );
    assert_eq!(tokens(&s[3])[0], "443");
    assert_eq!(s[4], "");
    // `/` starts from the current filter; Esc clears it.
    chars(&mut app, "/");
    assert_eq!(app.filter_input(), Some("808,443"));
    app.on_key(press(KeyCode::Esc));
    assert_eq!(app.filter_input(), None);
    assert!(app.options().ports.is_empty());
    // A filter that matches nothing says so.
    chars(&mut app, "/1");
    app.on_key(press(KeyCode::Enter));
    assert!(screen(&app).contains("(no ports match)"));
    assert_eq!(app.selected(), None);
}

#[test]
fn direction_filter_cycles() {
    let mut app = app();
    chars(&mut app, "i");
    assert_eq!(app.options().direction, Some(Direction::In));
    chars(&mut app, "i");
    assert_eq!(app.options().direction, Some(Direction::Out));
    assert_eq!(app.selected(), Some((Some(5432), Direction::Out)));
    chars(&mut app, "i");
    assert_eq!(app.options().direction, None);
}

#[test]
fn dwell_state_cycles() {
    let mut app = app();
    chars(&mut app, "d");
    assert_eq!(app.options().dwell_state, TcpState::FinWait1);
    chars(&mut app, "D");
    assert_eq!(app.options().dwell_state, TcpState::Established);
    app.on_key(press(KeyCode::BackTab));
    app.on_key(press(KeyCode::BackTab));
    assert_eq!(app.options().dwell_state, TcpState::SynSent);
    app.on_key(press(KeyCode::BackTab));
    assert_eq!(app.options().dwell_state, TcpState::Closing);
    app.on_key(press(KeyCode::Tab));
    assert_eq!(app.options().dwell_state, TcpState::SynSent);
    app.opts.dwell_state = TcpState::CloseWait;
    let s = lines(&draw(&app));
    let web = tokens(line_with(&s, "3/128"));
    assert_eq!(web[14..18], ["2.0s", "9m05s", "41m", "≥41m"]);
}

#[test]
fn drill_down_shows_the_port_in_detail() {
    let mut app = app();
    chars(&mut app, "jjj");
    app.on_key(press(KeyCode::Enter));
    assert_eq!(app.drill(), Some((Some(8080), Direction::In)));
    let s = lines(&draw(&app));
    let text = s.join("\n");
    assert!(s[1].ends_with("│ details of port 8080 in"), "{}", s[1]);
    assert!(s[2].starts_with(
        "port 8080 in  listening, accept queue 3/128  transitions 9050 (25/s)  SYN-ACK retrans 5 (0.5/s)  \
         resets sent 0 (0/s)  received 1 (0/s)  retransmits 17"
    ), "{text}");
    // Every state with its numbers; CLOSE_WAIT's oldest predates tracing.
    assert_eq!(
        tokens(line_with(&s, "CLOSE_WAIT  ")),
        [
            "CLOSE_WAIT",
            "312",
            "≥41m",
            "1150",
            "838",
            "25",
            "2.0s",
            "4m33s",
            "9m05s",
            "41m",
            "█",
            "▂▁",
            "LAST_ACK",
            "838"
        ]
    );
    let est = tokens(line_with(&s, "ESTABLISHED  40"));
    assert_eq!(
        est[..10],
        [
            "ESTABLISHED",
            "40",
            "15m",
            "1200",
            "1160",
            "0",
            "180ms",
            "2.0s",
            "4.0s",
            "1m01s"
        ]
    );
    assert!(line_with(&s, "ESTABLISHED  40").ends_with("CLOSE_WAIT 1150, CLOSE 10"));
    assert_eq!(
        tokens(line_with(&s, "SYN_RECV  "))[..3],
        ["SYN_RECV", "2", "-"]
    );
    // The histogram of the dwell state, with exact counts.
    assert!(
        text.contains("ESTABLISHED dwell histogram (d/D: state)"),
        "{text}"
    );
    let bars = line_with(&s, "≤262ms");
    assert!(bars.contains("████████") && bars.contains(" 900"), "{bars}");
    // Handshakes, resets, oldest sockets.
    assert!(
        text.contains("completed 1200  failed 3  SYN-ACK retrans 5 (0.5/s)"),
        "{text}"
    );
    assert!(
        text.contains("time p50 120µs  p90 510µs  p99 900µs  max 3.1s"),
        "{text}"
    );
    assert!(line_with(&s, "≤256µs").contains("1100"));
    assert!(text.contains("resets received 1 (0/s)"));
    assert_eq!(
        tokens(line_with(&s, "192.0.2.14")),
        [
            "CLOSE_WAIT",
            "≥41m",
            "10.1.0.7:8080",
            "192.0.2.14:51234",
            "4242",
            "java",
            "4026531840"
        ]
    );
    assert_eq!(tokens(line_with(&s, "192.0.2.15"))[1], "22m");

    // d switches the histogram; ↓ moves to the next port; Esc leaves.
    app.opts.dwell_state = TcpState::CloseWait;
    assert!(screen(&app).contains("CLOSE_WAIT dwell histogram"));
    app.opts.dwell_state = TcpState::Closing;
    assert!(screen(&app).contains("no completed stays in CLOSING"));
    app.on_key(press(KeyCode::Down));
    assert_eq!(app.drill(), Some((None, Direction::In)));
    app.on_key(press(KeyCode::Up));
    app.on_key(press(KeyCode::Up));
    app.on_key(press(KeyCode::Up));
    assert_eq!(app.drill(), Some((Some(443), Direction::In)));
    app.on_key(press(KeyCode::Up));
    let text = screen(&app);
    assert!(text.contains("resets sent 24 (2.0/s)"), "{text}");
    assert!(line_with(&lines(&draw(&app)), "NO_SOCKET").contains("no socket"));
    assert_eq!(app.on_key(press(KeyCode::Esc)), Control::Continue);
    assert_eq!(app.drill(), None);
    app.on_key(press(KeyCode::Enter));
    app.on_key(press(KeyCode::Backspace));
    assert_eq!(app.drill(), None);
}

#[test]
fn drill_into_a_port_that_went_away() {
    let mut app = app();
    chars(&mut app, "j");
    app.on_key(press(KeyCode::Enter));
    assert_eq!(app.drill(), Some((Some(443), Direction::In)));
    app.on_snapshot(incident());
    assert!(screen(&app).contains("port 443 in is not in the latest snapshot"));
}

#[test]
fn quit_keys() {
    let mut app = app();
    assert_eq!(app.on_key(press(KeyCode::Char('q'))), Control::Quit);
    assert_eq!(app.on_key(press(KeyCode::Esc)), Control::Quit);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(app.on_key(ctrl_c), Control::Quit);
    // Ctrl-C quits even while typing a filter; q in details quits too.
    chars(&mut app, "/");
    assert_eq!(app.on_key(ctrl_c), Control::Quit);
    let mut app = self::app();
    app.on_key(press(KeyCode::Enter));
    assert_eq!(app.on_key(press(KeyCode::Char('q'))), Control::Quit);
    // Key releases (kitty protocol) do nothing.
    let mut release = press(KeyCode::Char('q'));
    release.kind = KeyEventKind::Release;
    assert_eq!(app.on_key(release), Control::Continue);
}

#[test]
fn help_toggles_and_esc_closes_it_first() {
    let mut app = app();
    chars(&mut app, "?");
    let text = screen(&app);
    assert!(
        text.contains("Enter  details of the selected port"),
        "{text}"
    );
    assert!(text.contains("/  type ports to show (8080,443), Enter applies, Esc clears"));
    assert_eq!(app.on_key(press(KeyCode::Esc)), Control::Continue);
    assert!(!screen(&app).contains("details of the selected port"));
    chars(&mut app, "??");
    assert!(!screen(&app).contains("details of the selected port"));
}

#[test]
fn findings_panel_under_the_table() {
    let app = app();
    let buf = draw(&app);
    let s = lines(&buf);
    let at = s
        .iter()
        .position(|l| l.starts_with("findings 2 (Enter on a row: evidence)"))
        .unwrap_or_else(|| panic!("no findings panel:\n{}", s.join("\n")));
    // Right under the rows, after a blank line.
    assert_eq!(s[at - 1], "");
    assert!(
        s[at - 2].trim_start().starts_with("other in"),
        "{}",
        s.join("\n")
    );
    assert_eq!(
        s[at + 1],
        "CRIT :8080 in   java[4242] does not close() after the peer's FIN → fix its read() == 0 and error paths \
         that skip close(); keepalive does not fix this"
    );
    assert_eq!(
        s[at + 2],
        "WARN all ports  the ring buffer overflowed: every number here misses those events → raise --ring-size \
         (default 4M), or trace fewer ports (--port filters in the…"
    );
    // Cut to the screen's width, marked.
    assert_eq!(s[at + 2].chars().count(), 160);
    // Severity-coloured: critical red, warning yellow.
    assert_eq!(buf[(0, at as u16 + 1)].fg, Color::Red);
    assert_eq!(buf[(0, at as u16 + 2)].fg, Color::Yellow);
    assert_eq!(buf[(5, at as u16 + 1)].fg, Color::Reset);
    // The footer stays at the bottom.
    assert!(s[39].starts_with("↑↓ select"), "{}", s[39]);

    // The panel follows the filters: outbound rows only, the host-wide finding stays.
    let mut app = self::app();
    chars(&mut app, "ii");
    let s = lines(&draw(&app));
    assert!(
        s.iter().any(|l| l.starts_with("findings 1 ")),
        "{}",
        s.join("\n")
    );
    assert!(!s.iter().any(|l| l.contains("close() sockets")));

    // No findings: one dim line.
    let mut calm = later();
    calm.findings.clear();
    let mut app = App::default();
    app.on_snapshot(calm);
    let s = lines(&draw(&app));
    assert_eq!(s[9], "findings: none", "{}", s.join("\n"));
}

#[test]
fn findings_panel_shows_at_most_five_and_counts_the_rest() {
    let mut snap = later();
    let f = snap.findings[0].clone();
    snap.findings = (0..8)
        .map(|i| crate::findings::Finding {
            port: Some(8080),
            evidence: format!("#{i}"),
            ..f.clone()
        })
        .collect();
    let mut app = App::default();
    app.on_snapshot(snap);
    let s = lines(&draw(&app));
    assert_eq!(
        s.iter().filter(|l| l.starts_with("CRIT :8080 in")).count(),
        5
    );
    assert!(s.iter().any(|l| l == "… 3 more"), "{}", s.join("\n"));
    // A small screen gets fewer.
    let mut term = Terminal::new(TestBackend::new(160, 16)).unwrap();
    term.draw(|f| render(f, &app)).unwrap();
    let small = lines(term.backend().buffer());
    assert_eq!(
        small
            .iter()
            .filter(|l| l.starts_with("CRIT :8080 in"))
            .count(),
        2,
        "{}",
        small.join("\n")
    );
    assert!(
        small.iter().any(|l| l == "… 6 more"),
        "{}",
        small.join("\n")
    );
}

#[test]
fn drill_down_shows_the_findings_of_the_port() {
    let mut app = app();
    chars(&mut app, "jjj");
    app.on_key(press(KeyCode::Enter));
    assert_eq!(app.drill(), Some((Some(8080), Direction::In)));
    let buf = draw(&app);
    let s = lines(&buf);
    assert_eq!(s[4], "findings 1", "{}", s.join("\n"));
    assert_eq!(
        s[5],
        "CRIT close_wait_leak: 312 in CLOSE_WAIT now, oldest ≥41m; 838 CLOSE_WAIT -> LAST_ACK in 1h00m (p99 9m05s); \
         owner java[4242]"
    );
    assert_eq!(buf[(0, 5)].fg, Color::Red);
    assert_eq!(
        s[6],
        "     cause: java[4242] does not close() after the peer's FIN"
    );
    assert!(
        s[7].starts_with("     next:  fix its read() == 0"),
        "{}",
        s[7]
    );
    // Host-wide findings are not the port's.
    assert!(!s.iter().any(|l| l.contains("lost_events")));
    // A port without findings says so.
    app.on_key(press(KeyCode::Up));
    assert_eq!(app.drill(), Some((Some(5432), Direction::Out)));
    let s = lines(&draw(&app));
    assert_eq!(s[4], "no findings for this port", "{}", s.join("\n"));
}

#[test]
fn findings_panel_stays_visible_under_a_long_table() {
    let mut snap = later();
    let template = snap.ports[0].clone();
    for p in 1000..1060 {
        let mut row = template.clone();
        row.port = Some(p);
        snap.ports.push(row);
    }
    let mut app = App::default();
    app.on_snapshot(snap);
    let s = lines(&draw(&app));
    assert!(s[36].starts_with("CRIT :8080 in"), "{}", s.join("\n"));
    assert!(s[37].starts_with("WARN all ports"), "{}", s.join("\n"));
    assert!(s[39].starts_with("↑↓ select"));
}
