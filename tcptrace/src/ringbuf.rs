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
    /// Keeps the map's fd (and so the mappings' backing) alive.
    map: MapData,
    consumer: Mapping,
    /// The producer page, then the data area twice.
    producer: Mapping,
    page: usize,
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

impl Ring {
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
        let mut ring = Self {
            map,
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
            publish_every: PUBLISH_BYTES.min(size as u64 / 4),
            pos: 0,
            published: 0,
            produced: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.published = ring.pos;
        ring.produced = ring.pos;
        Ok(ring)
    }

    #[expect(clippy::cast_ptr_alignment, reason = "the mapping is page-aligned")]
    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer position is the first u64 of the consumer
        // page, page-aligned and live as long as `self`; the kernel reads it
        // concurrently, hence the atomic.
        unsafe { &*self.consumer.as_ptr().cast::<AtomicU64>() }
    }

    #[expect(clippy::cast_ptr_alignment, reason = "the mapping is page-aligned")]
    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, for the producer page, which the kernel writes.
        unsafe { &*self.producer.as_ptr().cast::<AtomicU64>() }
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data area starts one page into the producer mapping.
        unsafe { self.producer.as_ptr().add(self.page) }
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
        self.map.fd().as_fd().as_raw_fd()
    }
}
