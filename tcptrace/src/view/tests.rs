//! Tests of the shared view logic: rates, row order, sort keys.
#![expect(
    clippy::float_cmp,
    reason = "rates of whole counts over whole seconds are exact in f64"
)]

use super::fixtures::{incident, later};
use super::*;

#[test]
fn rates_between_two_snapshots_are_exact() {
    let r = rates(&incident(), &later()).unwrap();
    assert_eq!(r.interval_s, 2.0);
    assert!(r.windowed);
    assert_eq!(r.events, 25.0);
    assert_eq!(r.lost, 0.0);
    let web = r.ports[&(Some(8080), Direction::In)];
    assert_eq!(
        web,
        PortRates {
            transitions: 25.0,
            synack_retrans: 0.5,
            resets_sent: 0.0,
            resets_received: 0.0,
        }
    );
    assert_eq!(r.ports[&(Some(9), Direction::In)].resets_sent, 2.0);
    // New in `later`: counted from zero.
    let tls = r.ports[&(Some(443), Direction::In)];
    assert_eq!((tls.transitions, tls.resets_received), (4.0, 1.0));
    assert_eq!(r.ports[&(None, Direction::In)], PortRates::default());
    assert_eq!(r.ports.len(), 5);
}

#[test]
fn rates_need_time_to_pass() {
    assert_eq!(rates(&incident(), &incident()), None);
    assert_eq!(rates(&later(), &incident()), None);
    // Without a usable previous snapshot: averages since start.
    let avg = rates_or_average(Some(&incident()), &incident());
    assert!(!avg.windowed);
    assert_eq!(avg.interval_s, 3_600.0);
    assert_eq!(avg.events, 10.0);
    assert_eq!(avg.ports[&(Some(8080), Direction::In)].transitions, 2.5);
    assert_eq!(
        rates_or_average(None, &Snapshot::default()),
        Rates::default()
    );
}

#[test]
fn totals_round_the_window_against_timer_jitter() {
    let mut cur = later();
    cur.uptime_s = 3_600.999;
    let line = totals_line(&cur, &rates(&incident(), &cur).unwrap());
    assert!(
        line.starts_with("up 1h00m  events 36050 (50/s last 1.0s)  LOST 7  untracked 3"),
        "{line}"
    );
}

#[test]
fn counters_going_backwards_count_as_zero() {
    let mut prev = later();
    prev.uptime_s = 1.0;
    let r = rates(&prev, &incident()).unwrap();
    assert_eq!(r.ports[&(Some(8080), Direction::In)].transitions, 0.0);
    assert_eq!(r.events, 0.0);
}

#[test]
fn top_reset_reason_sums_over_states_before() {
    let mut p = incident().ports.remove(0);
    let reset = |reason: &str, state_before, count| crate::snapshot::ResetCount {
        reason: reason.to_string(),
        state_before,
        count,
    };
    p.resets_sent = vec![
        reset("TCP_ABORT_ON_CLOSE", Some(TcpState::Established), 5),
        reset("NO_SOCKET", None, 4),
        reset("NO_SOCKET", Some(TcpState::SynRecv), 3),
    ];
    assert_eq!(top_reset_reason(&p), Some("NO_SOCKET"));
    p.resets_sent.truncate(1);
    assert_eq!(top_reset_reason(&p), Some("TCP_ABORT_ON_CLOSE"));
    p.resets_sent.clear();
    assert_eq!(top_reset_reason(&p), None);
}

#[test]
fn sort_keys_cycle_and_parse() {
    assert_eq!(SortKey::Port.cycle(1), SortKey::AcceptQueue);
    assert_eq!(SortKey::Port.cycle(-1), SortKey::ResetsReceived);
    assert_eq!(SortKey::ResetsReceived.cycle(1), SortKey::Port);
    assert_eq!("trans".parse(), Ok(SortKey::Transitions));
    assert_eq!("rate".parse(), Ok(SortKey::TransitionRate));
    assert_eq!("rst-out".parse(), Ok(SortKey::ResetsSent));
    assert_eq!("close_w".parse(), Ok(SortKey::Now(TcpState::CloseWait)));
    assert_eq!("close-wait".parse(), Ok(SortKey::Now(TcpState::CloseWait)));
    assert_eq!("p99".parse(), Ok(SortKey::DwellP99));
    assert!("listen".parse::<SortKey>().is_ok());
    assert!(
        "bogus"
            .parse::<SortKey>()
            .unwrap_err()
            .starts_with("unknown sort column 'bogus'")
    );
    // Every sortable column has its key, in the same order.
    let keyed: Vec<_> = columns().iter().filter_map(|c| c.sort).collect();
    assert_eq!(keyed, SortKey::ALL);
}

#[test]
fn cells_match_columns() {
    let snap = incident();
    for p in &snap.ports {
        assert_eq!(
            cells(p, PortRates::default(), TcpState::Established).len(),
            columns().len()
        );
    }
    let full = PortSnapshot {
        accept_queue: Some(crate::snapshot::AcceptQueue { len: 128, max: 128 }),
        ..snap.ports[2].clone()
    };
    let c = cells(&full, PortRates::default(), TcpState::Established);
    assert_eq!((c[2].text.as_str(), c[2].tone), ("128/128", Tone::Alert));
    assert_eq!(c[3].tone, Tone::Quiet);
}
