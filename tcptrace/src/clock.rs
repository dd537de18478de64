//! Kernel timestamps (CLOCK_MONOTONIC, from `bpf_ktime_get_ns`) to wall-clock time.

use jiff::Timestamp;

/// The offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once. Wall
/// clock steps after that do not move event times, which keeps them ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: real - mono,
        }
    }

    /// For tests and recordings made elsewhere.
    pub fn with_offset(realtime_minus_monotonic_ns: i128) -> Self {
        Self {
            realtime_minus_monotonic_ns,
        }
    }

    pub fn offset_ns(self) -> i128 {
        self.realtime_minus_monotonic_ns
    }

    pub fn monotonic_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }

    /// RFC 3339 UTC to the millisecond, for report and snapshot headers.
    pub fn wall_ms(self, monotonic_ns: u64) -> String {
        self.wall(monotonic_ns)
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    }

    pub fn wall(self, monotonic_ns: u64) -> Timestamp {
        let ns = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec we own; both clocks always exist.
    unsafe { libc::clock_gettime(id, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_monotonic_to_wall_time() {
        let c = Clock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.wall(5_000).to_string(), "2023-11-14T22:13:20.000005Z");
        assert_eq!(c.wall_ms(1_234_567_890), "2023-11-14T22:13:21.234Z");
    }

    #[test]
    fn now_is_close_to_the_system_clock() {
        let c = Clock::now();
        let wall = c.wall(Clock::monotonic_now_ns());
        let diff = (Timestamp::now().as_nanosecond() - wall.as_nanosecond()).abs();
        assert!(diff < 1_000_000_000, "{diff}");
    }
}
