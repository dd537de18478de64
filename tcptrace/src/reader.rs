//! Drains the BPF ring buffers.
//!
//! The programs submit without waking userspace (`BPF_RB_NO_WAKEUP`): a wake-up
//! per event costs more than the rest of the pipeline. The reader therefore
//! wakes on a short timer, or earlier when the kernel forces a wake-up because
//! the ring passed its fill threshold, and then drains every ring completely.
//! It takes any number of rings so that many-core hosts can use one per CPU.

use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tcptrace_ebpf::EVENT_SIZE;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Default interval between drains when no wake-up arrives.
pub const DEFAULT_POLL: Duration = Duration::from_millis(10);

pub struct Reader {
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    poll: Duration,
    /// With several rings: the next record of each, copied out (reused
    /// between drains, so merging allocates nothing).
    heads: Vec<Vec<u8>>,
}

impl Reader {
    pub fn new(rings: Vec<RingBuf<MapData>>, poll: Duration) -> Result<Self> {
        let mut registered = Vec::with_capacity(rings.len());
        for ring in rings {
            // SAFETY: the fd belongs to the RingBuf's MapData, which the
            // AsyncFd owns: it stays open, and the same, until the AsyncFd is
            // dropped.
            let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("register the ring buffer with tokio")?;
            registered.push(fd);
        }
        let rings = registered;
        Ok(Self {
            heads: vec![Vec::new(); rings.len()],
            rings,
            poll,
        })
    }

    /// Waits until a ring signals data or the poll interval passes.
    pub async fn wait(&mut self) {
        let mut timer = pin!(tokio::time::sleep(self.poll));
        poll_fn(|cx| {
            for ring in &mut self.rings {
                if let Poll::Ready(Ok(mut guard)) = ring.poll_read_ready_mut(cx) {
                    // Cleared before draining: data that arrives during the
                    // drain re-arms the readiness instead of being missed.
                    guard.clear_ready();
                    return Poll::Ready(());
                }
            }
            timer.as_mut().poll(cx)
        })
        .await;
    }

    /// Hands every record waiting in every ring to `f`; returns how many.
    /// One ring is already in order. Several are merged by their records'
    /// kernel timestamp (the first 8 bytes), each ring being in time order
    /// itself, so that one socket's events, written from different CPUs,
    /// reach the tracker in the order they happened.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        if let [only] = self.rings.as_mut_slice() {
            let ring = only.get_mut();
            let mut n = 0;
            while let Some(item) = ring.next() {
                f(&item);
                n += 1;
            }
            return n;
        }
        let rings = &mut self.rings;
        merge(
            &mut self.heads,
            |i, buf| match rings[i].get_mut().next() {
                Some(item) => {
                    // A constant length makes the copy a few inlined vector
                    // moves rather than a memmove call per record.
                    match <&[u8; EVENT_SIZE]>::try_from(&item[..]) {
                        Ok(record) => buf.extend_from_slice(record),
                        Err(_) => buf.extend_from_slice(&item),
                    }
                    true
                }
                None => false,
            },
            &mut f,
        )
    }
}

/// The kernel timestamp that starts a record.
fn timestamp(record: &[u8]) -> u64 {
    record
        .get(..8)
        .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Merges sources that are each in time order: `next(i, buf)` appends
/// source i's next record to `buf` (false when it has none), and `f` gets
/// every record, oldest first; ties go to the lower source. A record is
/// copied out of its ring as soon as it is a head, so that every ring's
/// slot is released at once. One comparison per source and record: for the
/// few rings a host uses, cheaper than sorting a drain.
fn merge(
    heads: &mut [Vec<u8>],
    mut next: impl FnMut(usize, &mut Vec<u8>) -> bool,
    f: &mut impl FnMut(&[u8]),
) -> usize {
    for (i, head) in heads.iter_mut().enumerate() {
        head.clear();
        next(i, head);
    }
    let mut n = 0;
    while let Some(i) = (0..heads.len())
        .filter(|&i| !heads[i].is_empty())
        .min_by_key(|&i| timestamp(&heads[i]))
    {
        f(&heads[i]);
        n += 1;
        heads[i].clear();
        next(i, &mut heads[i]);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_several_rings_come_out_in_timestamp_order() {
        let rec = |ts: u64, tag: u8| {
            let mut r = ts.to_ne_bytes().to_vec();
            r.push(tag);
            r
        };
        // Each ring in time order, as the kernel writes them.
        let mut rings = [
            vec![rec(10, b'a'), rec(30, b'c'), rec(40, b'e')],
            vec![rec(10, b'b'), rec(35, b'd')],
            vec![],
            vec![rec(50, b'f')],
        ]
        .map(std::collections::VecDeque::from);
        let mut heads = vec![Vec::new(); rings.len()];
        let mut seen = Vec::new();
        let n = merge(
            &mut heads,
            |i, buf| rings[i].pop_front().map(|r| buf.extend(r)).is_some(),
            &mut |r: &[u8]| seen.push(r[8]),
        );
        assert_eq!(n, 6);
        assert_eq!(seen, b"abcdef", "by time; equal times go to the lower ring");
        assert!(rings.iter().all(std::collections::VecDeque::is_empty));
    }
}
