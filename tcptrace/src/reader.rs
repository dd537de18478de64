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
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Default interval between drains when no wake-up arrives.
pub const DEFAULT_POLL: Duration = Duration::from_millis(10);

pub struct Reader {
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    poll: Duration,
    /// With several rings: the records of one drain, and (timestamp, offset,
    /// length) of each, reused between drains so merging allocates nothing.
    merge_bytes: Vec<u8>,
    merge_index: Vec<(u64, usize, usize)>,
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
            rings,
            poll,
            merge_bytes: Vec::new(),
            merge_index: Vec::new(),
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
    /// One ring is already in order. Records of several rings are merged by
    /// their kernel timestamp (the first 8 bytes), so that one socket's events,
    /// written from different CPUs, reach the tracker in the order they
    /// happened.
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
        self.merge_bytes.clear();
        self.merge_index.clear();
        for ring in &mut self.rings {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                let ts = item
                    .get(..8)
                    .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])));
                self.merge_index
                    .push((ts, self.merge_bytes.len(), item.len()));
                self.merge_bytes.extend_from_slice(&item);
            }
        }
        merge(&self.merge_bytes, &mut self.merge_index, &mut f)
    }
}

/// Calls `f` on each record of `bytes` in timestamp order (stable for ties).
fn merge(bytes: &[u8], index: &mut [(u64, usize, usize)], f: &mut impl FnMut(&[u8])) -> usize {
    index.sort_by_key(|(ts, _, _)| *ts);
    for (_, at, len) in index.iter() {
        f(&bytes[*at..*at + *len]);
    }
    index.len()
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
        // Ring 0 then ring 1, as drained.
        let records = [rec(30, b'a'), rec(10, b'b'), rec(20, b'c'), rec(10, b'd')];
        let mut bytes = Vec::new();
        let mut index = Vec::new();
        for r in &records {
            index.push((
                u64::from_ne_bytes(r[..8].try_into().unwrap()),
                bytes.len(),
                r.len(),
            ));
            bytes.extend_from_slice(r);
        }
        let mut seen = Vec::new();
        let n = merge(&bytes, &mut index, &mut |r: &[u8]| seen.push(r[8]));
        assert_eq!(n, 4);
        assert_eq!(seen, b"bdca", "by time; equal times keep drain order");
    }
}
