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
        Ok(Self { rings, poll })
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
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        for ring in &mut self.rings {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                f(&item);
                n += 1;
            }
        }
        n
    }
}
