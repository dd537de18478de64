//! Numbers for people: durations, lower-bound ages, rates and text bars, each
//! as short as it can be while staying unambiguous in a dense column.

/// A duration in microseconds, in at most six characters: `85µs`, `1.5ms`,
/// `312ms`, `4.2s`, `59s`, `4m05s`, `41m`, `2h05m`, `13h`, `3d04h`.
///
/// Values are truncated, never rounded up, so that a lower bound printed with
/// `≥` stays a true lower bound and `999µs` never becomes `1.0ms`.
pub fn duration_us(us: u64) -> String {
    const MS: u64 = 1_000;
    const S: u64 = 1_000_000;
    let s = us / S;
    match us {
        0..MS => format!("{us}µs"),
        MS..10_000 => format!("{}.{}ms", us / MS, us / 100 % 10),
        10_000..S => format!("{}ms", us / MS),
        S..10_000_000 => format!("{s}.{}s", us / 100_000 % 10),
        _ => match s {
            ..60 => format!("{s}s"),
            60..600 => format!("{}m{:02}s", s / 60, s % 60),
            600..3_600 => format!("{}m", s / 60),
            3_600..36_000 => format!("{}h{:02}m", s / 3_600, s / 60 % 60),
            36_000..86_400 => format!("{}h", s / 3_600),
            86_400..864_000 => format!("{}d{:02}h", s / 86_400, s / 3_600 % 24),
            _ => format!("{}d", s / 86_400),
        },
    }
}

/// A duration in seconds, as [`duration_us`]; `?` for nonsense (negative, NaN).
pub fn duration_s(s: f64) -> String {
    if s.is_finite() && s >= 0.0 {
        #[expect(clippy::cast_sign_loss, reason = "checked non-negative above")]
        let us = (s * 1e6) as u64;
        duration_us(us)
    } else {
        "?".to_string()
    }
}

/// An age in seconds; `≥` marks a lower bound (the stay began before tracing).
pub fn age(s: f64, exact: bool) -> String {
    let d = duration_s(s);
    if exact { d } else { format!("≥{d}") }
}

/// A per-second rate: `0` only when nothing happened, one decimal below 10
/// (so `0.1/s` of SYN-ACK retransmits does not read as zero), whole above.
pub fn rate(per_s: f64) -> String {
    if per_s <= 0.0 || !per_s.is_finite() {
        "0".to_string()
    } else if per_s < 10.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// A horizontal bar of `count` scaled so that `max` fills `width` cells, in
/// eighths of a cell. A non-zero count always shows at least a sliver.
pub fn bar(count: u64, max: u64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if count == 0 || max == 0 || width == 0 {
        return String::new();
    }
    let eighths = (u128::from(count.min(max)) * (width as u128) * 8 / u128::from(max)).max(1);
    let eighths = eighths as usize;
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(PARTS[eighths % 8]);
    }
    s
}

/// One cell of a sparkline: `count` relative to `max`, blank for zero.
pub fn spark(count: u64, max: u64) -> char {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if count == 0 || max == 0 {
        return ' ';
    }
    let i = (u128::from(count.min(max)) * 8).div_ceil(u128::from(max)) as usize;
    LEVELS[i.clamp(1, 8) - 1]
}

/// Display width of a cell's text. Every character these views print (digits,
/// ASCII, `≥`, `µ`, block elements) is one column wide.
pub fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short_and_truncated() {
        let cases = [
            (0, "0µs"),
            (85, "85µs"),
            (999, "999µs"),
            (1_000, "1.0ms"),
            (1_599, "1.5ms"),
            (9_999, "9.9ms"),
            (312_400, "312ms"),
            (1_000_000, "1.0s"),
            (4_290_000, "4.2s"),
            (59_900_000, "59s"),
            (245_000_000, "4m05s"),
            (2_460_000_000, "41m"),
            (2_519_000_000, "41m"),
            (7_500_000_000, "2h05m"),
            (47_000_000_000, "13h"),
            (273_600_000_000, "3d04h"),
            (1_000_000_000_000, "11d"),
        ];
        for (us, want) in cases {
            assert_eq!(duration_us(us), want, "{us}µs");
        }
        assert_eq!(duration_s(2_460.9), "41m");
        assert_eq!(duration_s(-1.0), "?");
        assert_eq!(duration_s(f64::NAN), "?");
    }

    #[test]
    fn lower_bounds_are_marked() {
        assert_eq!(age(2_460.0, false), "≥41m");
        assert_eq!(age(0.3, true), "300ms");
    }

    #[test]
    fn rates_keep_small_values_visible() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.04), "0.0");
        assert_eq!(rate(0.1), "0.1");
        assert_eq!(rate(9.96), "10.0");
        assert_eq!(rate(812.4), "812");
        assert_eq!(rate(f64::NAN), "0");
    }

    #[test]
    fn bars_scale_in_eighths() {
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 4), "██");
        assert_eq!(bar(1, 1_000, 4), "▏");
        assert_eq!(bar(0, 10, 4), "");
        assert_eq!(bar(3, 8, 1), "▍");
        assert_eq!(spark(0, 10), ' ');
        assert_eq!(spark(1, 1_000), '▁');
        assert_eq!(spark(10, 10), '█');
        assert_eq!(width("≥41m"), 4);
    }
}
