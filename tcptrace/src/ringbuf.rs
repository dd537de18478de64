//! The consumer side of a BPF ring buffer, mapped and read directly.
//!
//! aya's `RingBuf` (like libbpf's `ring_buffer__poll`) publishes the
//! consumer position after every record. Every producer's reserve reads that
//! position (kernel/bpf/ringbuf.c: `__bpf_ringbuf_reserve` checks the free
//! space against `consumer_pos`), so while the reader drains, the cache line
//! holding it moves between the reader's CPU and every producing CPU once per
//! record, and both sides wait for it. This reader publishes the position
//! once per [`PUBLISH_BYTES`] and at the end of each drain; the kernel only
//! sees the space come back in larger steps.
//!
//! The memory layout and record header are the kernel's ABI
//! (include/uapi/linux/bpf.h: `BPF_RINGBUF_BUSY_BIT`, `BPF_RINGBUF_DISCARD_BIT`,
//! `BPF_RINGBUF_HDR_SZ`; kernel/bpf/ringbuf.c: `ringbuf_map_mmap_kern`):
//! one writable page holding the consumer position, then one read-only page
//! holding the producer position, then the data pages, mapped twice in a
//! row so that a record that wraps around the end reads as one slice.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};

use crate::mapping::{Mapping, page_size};

/// The record is still being written (BPF_RINGBUF_BUSY_BIT).
const BUSY: u32 = 1 << 31;
/// The producer discarded the record (BPF_RINGBUF_DISCARD_BIT).
const DISCARD: u32 = 1 << 30;
/// Record header: length and flags, then the page offset (BPF_RINGBUF_HDR_SZ).
const HEADER: u64 = 8;
/// Consumed bytes after which the position is published mid-drain, so that a
/// long drain gives space back to the producers as it goes (a quarter of a
/// smaller ring).
const PUBLISH_BYTES: u64 = 64 << 10;

/// A record waiting at the consumer position: where it starts, how long it
/// is, and where the position goes once it is consumed.
#[derive(Debug)]
pub struct Head {
    at: u64,
    len: usize,
    next: u64,
}

pub struct Ring {
    /// What the pointers below point into, kept alive with them.
    backing: Backing,
    /// The consumer position (ours to write, the kernel reads it).
    consumer: NonNull<AtomicU64>,
    /// The producer position (the kernel writes it).
    producer: NonNull<AtomicU64>,
    /// The data area, twice in a row.
    data: NonNull<u8>,
    mask: u64,
    publish_every: u64,
    /// Our position: every record before it has been handed out.
    pos: u64,
    /// The position last published to the kernel.
    published: u64,
    /// The producer position last read: records up to it are committed or
    /// in progress.
    produced: u64,
}

enum Backing {
    /// A ring buffer map and our two mappings of it.
    Map {
        map: MapData,
        _consumer: Mapping,
        _producer: Mapping,
    },
    /// Plain memory laid out like the mappings (tests): the consumer
    /// position, the producer position, then the data area twice.
    #[cfg(test)]
    Memory { _words: Box<[AtomicU64]> },
}

// SAFETY: the pointers point into the backing, which this value owns; the
// kernel's side of the shared words is synchronised through atomics.
unsafe impl Send for Ring {}

impl Ring {
    #[expect(clippy::cast_ptr_alignment, reason = "the mappings are page-aligned")]
    pub fn new(map: Map) -> Result<Self> {
        let Map::RingBuf(map) = map else {
            bail!("not a ring buffer map")
        };
        let size = map.info().context("ring buffer info")?.max_entries() as usize;
        let page = page_size();
        // The kernel makes rings of whole pages, a power of two in size.
        if !size.is_power_of_two() || size < page {
            bail!("unexpected ring buffer size {size}");
        }
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, 0, true, "the ring buffer's consumer page")?;
        let producer = Mapping::new(fd, page + 2 * size, page, false, "the ring buffer's data")?;
        // SAFETY: both mappings are page-aligned (so aligned for the u64
        // positions at their start), not null, and live as long as the
        // backing; the data area starts one page into the producer mapping.
        let (consumer_pos, producer_pos, data) = unsafe {
            (
                NonNull::new_unchecked(consumer.as_ptr().cast::<AtomicU64>()),
                NonNull::new_unchecked(producer.as_ptr().cast::<AtomicU64>()),
                NonNull::new_unchecked(producer.as_ptr().add(page)),
            )
        };
        let backing = Backing::Map {
            map,
            _consumer: consumer,
            _producer: producer,
        };
        Ok(Self::over(backing, consumer_pos, producer_pos, data, size))
    }

    fn over(
        backing: Backing,
        consumer: NonNull<AtomicU64>,
        producer: NonNull<AtomicU64>,
        data: NonNull<u8>,
        size: usize,
    ) -> Self {
        let mut ring = Self {
            backing,
            consumer,
            producer,
            data,
            mask: size as u64 - 1,
            publish_every: PUBLISH_BYTES.min(size as u64 / 4),
            pos: 0,
            published: 0,
            produced: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.published = ring.pos;
        ring.produced = ring.pos;
        ring
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: aligned and live as long as `self` (see `new`).
        unsafe { self.consumer.as_ref() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { self.producer.as_ref() }
    }

    fn data(&self) -> *const u8 {
        self.data.as_ptr()
    }

    /// The next committed record, without consuming it; `None` when the
    /// ring is empty or its next record is still being written.
    #[expect(clippy::cast_ptr_alignment, reason = "records are 8-aligned")]
    pub fn head(&mut self) -> Option<Head> {
        loop {
            if self.pos == self.produced {
                self.produced = self.producer_pos().load(Ordering::Acquire);
                if self.pos == self.produced {
                    return None;
                }
            }
            let offset = (self.pos & self.mask) as usize;
            // SAFETY: `offset` is within the data area and 8-aligned (every
            // record is); the header's release store by the committing
            // producer pairs with this acquire load, which makes the record's
            // bytes visible.
            let header =
                unsafe { (*self.data().add(offset).cast::<AtomicU32>()).load(Ordering::Acquire) };
            if header & BUSY != 0 {
                return None;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            let next = self.pos + (len as u64 + HEADER).next_multiple_of(8);
            if header & DISCARD != 0 {
                self.pos = next;
                continue;
            }
            return Some(Head {
                at: self.pos,
                len: len.min(self.mask as usize + 1 - HEADER as usize),
                next,
            });
        }
    }

    /// The bytes of a record from [`Ring::head`]; empty for a head whose
    /// space was given back to the kernel already.
    pub fn bytes(&self, head: &Head) -> &[u8] {
        if head.at < self.published || head.next > self.produced {
            return &[];
        }
        let offset = (head.at & self.mask) as usize + HEADER as usize;
        // SAFETY: the record lies between the published consumer position
        // and the producer position read with acquire after its commit (see
        // `head`), so it is committed and the kernel will not write its space
        // before `publish` moves past it, which needs `&mut self`. It starts
        // within the data area and is at most one ring long, and the data
        // area is mapped twice in a row: the slice stays in the mapping even
        // when the record wraps around the end.
        unsafe { std::slice::from_raw_parts(self.data().add(offset), head.len) }
    }

    /// Moves past a record from [`Ring::head`]; publishes the position when
    /// enough has been consumed since the last time.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "taking the head makes a consumed record unusable"
    )]
    pub fn consume(&mut self, head: Head) {
        self.pos = head.next;
        if self.pos - self.published >= self.publish_every {
            self.publish();
        }
    }

    /// Gives the consumed space back to the producers.
    pub fn publish(&mut self) {
        if self.published != self.pos {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        match &self.backing {
            Backing::Map { map, .. } => map.fd().as_fd().as_raw_fd(),
            // Never registered with a poller.
            #[cfg(test)]
            Backing::Memory { .. } => -1,
        }
    }
}

#[cfg(test)]
pub mod testing {
    //! Rings over plain memory, written the way the kernel writes them.
    use super::*;

    /// A ring over plain memory, `size` data bytes, starting at `pos`.
    pub fn ring(size: usize, pos: u64) -> Ring {
        let words: Box<[AtomicU64]> = (0..2 + 2 * size / 8).map(|_| AtomicU64::new(0)).collect();
        words[0].store(pos, Ordering::Relaxed);
        words[1].store(pos, Ordering::Relaxed);
        let consumer = NonNull::from(&words[0]);
        let producer = NonNull::from(&words[1]);
        let data = NonNull::from(&words[2]).cast::<u8>();
        Ring::over(
            Backing::Memory { _words: words },
            consumer,
            producer,
            data,
            size,
        )
    }

    /// Writes a record at `at` as the kernel does (header, then payload;
    /// contiguous, as the double mapping shows it) and returns the position
    /// after it. The producer position is the caller's to move.
    pub fn write(ring: &Ring, at: u64, payload: &[u8], flags: u32) -> u64 {
        let offset = (at & ring.mask) as usize;
        let header = payload.len() as u32 | flags;
        // SAFETY: within the test's data area (twice the ring), which is
        // atomics, so writable through a shared reference.
        unsafe {
            let p = ring.data.as_ptr().add(offset);
            p.cast::<u32>().write_unaligned(header);
            p.add(4).cast::<u32>().write_unaligned(0);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(8), payload.len());
        }
        at + (payload.len() as u64 + HEADER).next_multiple_of(8)
    }

    pub fn produced(ring: &Ring, pos: u64) {
        ring.producer_pos().store(pos, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    /// Everything `head` hands out now, consumed in order.
    fn drain(ring: &mut Ring) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(head) = ring.head() {
            out.push(ring.bytes(&head).to_vec());
            ring.consume(head);
        }
        out
    }

    #[test]
    fn records_come_out_in_order_and_discarded_ones_are_skipped() {
        let mut r = ring(4096, 0);
        let mut at = write(&r, 0, b"first", 0);
        at = write(&r, at, b"dropped", DISCARD);
        at = write(&r, at, b"second!!", 0);
        produced(&r, at);
        assert_eq!(drain(&mut r), [b"first".to_vec(), b"second!!".to_vec()]);
        assert_eq!(
            r.consumer_pos().load(Ordering::Relaxed),
            0,
            "not published yet"
        );
        r.publish();
        assert_eq!(r.consumer_pos().load(Ordering::Relaxed), at);
    }

    #[test]
    fn a_record_still_being_written_stops_the_drain_until_committed() {
        let mut r = ring(4096, 0);
        let mid = write(&r, 0, b"done", 0);
        let end = write(&r, mid, b"busy", BUSY);
        produced(&r, end);
        assert_eq!(drain(&mut r), [b"done".to_vec()]);
        write(&r, mid, b"busy", 0);
        assert_eq!(drain(&mut r), [b"busy".to_vec()]);
    }

    #[test]
    fn a_record_that_wraps_around_the_end_reads_whole() {
        let size = 4096;
        let start = 3 * size as u64 - 16;
        let mut r = ring(size, start);
        let payload: Vec<u8> = (0..40).collect();
        let end = write(&r, start, &payload, 0);
        produced(&r, end);
        assert_eq!(drain(&mut r), [payload]);
        r.publish();
        assert_eq!(r.consumer_pos().load(Ordering::Relaxed), start + 48);
    }

    #[test]
    fn space_goes_back_once_per_quarter_of_a_small_ring_and_at_the_end() {
        // 56-byte payloads: 64 bytes a record, 16 of them a quarter ring.
        let mut r = ring(4096, 0);
        let mut at = 0;
        for i in 0..20u8 {
            at = write(&r, at, &[i; 56], 0);
        }
        produced(&r, at);
        let mut published = Vec::new();
        while let Some(head) = r.head() {
            r.consume(head);
            published.push(r.consumer_pos().load(Ordering::Relaxed));
        }
        assert_eq!(published[14], 0);
        assert_eq!(published[15..], [1024; 5]);
        r.publish();
        assert_eq!(r.consumer_pos().load(Ordering::Relaxed), 1280);
    }

    #[test]
    fn a_head_whose_space_went_back_reads_empty() {
        let mut r = ring(4096, 0);
        let end = write(&r, 0, b"once", 0);
        produced(&r, end);
        let stale = r.head().expect("a record");
        let head = r.head().expect("the same record");
        assert_eq!(r.bytes(&stale), b"once");
        r.consume(head);
        r.publish();
        assert_eq!(r.bytes(&stale), b"");
        assert!(r.head().is_none());
    }
}
