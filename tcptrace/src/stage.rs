//! The per-CPU stages in which the BPF programs collect records before they
//! send them to a ring as one batch (tcptrace.h: `struct tcptrace_stage`),
//! read in place: a CPU that goes quiet with records staged holds none back.
//!
//! Each stage has a generation, `batch.gen`, which the kernel advances after
//! sending the stage's records as the batch of that generation. Taking
//! records is a seqcount read: the generation, then the count of complete
//! records, then the records, then the generation again; a copy made while
//! the generation moved is dropped, those records being in the ring by then.
//! A batch whose first records were taken arrives later and is read from
//! after them ([`Books::skip`]).

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use anyhow::Result;
use aya::maps::Map;
use tcptrace_ebpf::EVENT_SIZE;
use tcptrace_ebpf::batch::{MAX, STAGE_GEN, STAGE_N, STAGE_REC, STAGE_SIZE};

use crate::mapping::ArrayMapping;

/// One record's bytes, copied out of a stage.
pub type Record = [u8; EVENT_SIZE];

/// Every CPU's stage, mapped read-only.
pub struct Stages {
    _backing: Backing,
    base: NonNull<u8>,
    /// Per CPU: records taken and not yet handed out, oldest first.
    queues: Vec<VecDeque<Record>>,
    books: Books,
}

enum Backing {
    /// The map and our mapping of it, kept alive with `base`.
    Map(#[expect(dead_code, reason = "kept for its Drop")] ArrayMapping),
    /// Plain memory laid out like the map's values (tests).
    #[cfg(test)]
    Memory { _words: Box<[AtomicU64]> },
}

// SAFETY: `base` points into the backing, which this value owns; the kernel's
// writes are read through atomics only.
unsafe impl Send for Stages {}

/// What was taken from each CPU's stage, for reading its batches.
#[derive(Debug, Default)]
pub struct Books {
    cpus: Vec<Book>,
}

#[derive(Debug, Default)]
struct Book {
    /// Generations some of whose records were taken, and how many, oldest
    /// first: their batches start after those records.
    taken: VecDeque<(u64, usize)>,
    /// The newest generation whose batch a ring has shown: should the stage
    /// still show it (the kernel between sending it and advancing the
    /// generation), its records are not taken again.
    sent: Option<u64>,
}

impl Books {
    /// Where the batch of `cpu`'s stage generation `gen` starts: after the
    /// records already taken from the stage.
    pub fn skip(&mut self, cpu: u32, generation: u64) -> usize {
        let Some(book) = self.cpus.get_mut(cpu as usize) else {
            return 0;
        };
        book.sent = Some(book.sent.map_or(generation, |s| s.max(generation)));
        while let Some(&(g, taken)) = book.taken.front() {
            if g > generation {
                break;
            }
            book.taken.pop_front();
            if g == generation {
                return taken;
            }
        }
        0
    }
}

impl Stages {
    /// Maps the `stage` array, one value per possible CPU.
    pub fn new(map: Map) -> Result<Self> {
        let array = ArrayMapping::new(map, STAGE_SIZE, "the per-CPU stages")?;
        let cpus = array.entries;
        // SAFETY: a successful mapping is not null.
        let base = unsafe { NonNull::new_unchecked(array.mapping.as_ptr()) };
        Ok(Self::over(Backing::Map(array), base, cpus))
    }

    fn over(backing: Backing, base: NonNull<u8>, cpus: usize) -> Self {
        Self {
            _backing: backing,
            base,
            queues: (0..cpus).map(|_| VecDeque::with_capacity(MAX)).collect(),
            books: Books {
                cpus: (0..cpus).map(|_| Book::default()).collect(),
            },
        }
    }

    /// The possible CPUs, one stage each.
    pub fn cpus(&self) -> usize {
        self.queues.len()
    }

    /// Takes every complete record staged on any CPU that was not taken yet.
    pub fn take(&mut self) {
        for (cpu, (queue, book)) in self.queues.iter_mut().zip(&mut self.books.cpus).enumerate() {
            // SAFETY: CPU `cpu`'s value lies within the backing.
            let stage = unsafe { self.base.as_ptr().add(cpu * STAGE_SIZE) };
            take_from(stage, queue, book);
        }
    }

    /// The queues of taken records, and the books their batches need.
    pub fn parts(&mut self) -> (&mut [VecDeque<Record>], &mut Books) {
        (&mut self.queues, &mut self.books)
    }
}

/// Takes the records of one stage that are complete and not taken yet.
#[expect(clippy::cast_ptr_alignment, reason = "stages are 8-aligned")]
fn take_from(stage: *const u8, queue: &mut VecDeque<Record>, book: &mut Book) {
    // SAFETY (all loads below): `stage` is a live stage value, 8-aligned
    // (page-aligned mapping, STAGE_SIZE a multiple of 8), and so are the
    // generation, the count and every record; the kernel writes them
    // concurrently, so they are read as atomics.
    let (generation, count) = unsafe {
        (
            &*stage.add(STAGE_GEN).cast::<AtomicU64>(),
            &*stage.add(STAGE_N).cast::<AtomicU32>(),
        )
    };
    let g = generation.load(Ordering::Acquire);
    if book.sent.is_some_and(|sent| g <= sent) {
        return;
    }
    let n = (count.load(Ordering::Acquire) as usize).min(MAX);
    let from = match book.taken.back() {
        Some(&(taken_gen, taken)) if taken_gen == g => taken,
        _ => 0,
    };
    if n <= from {
        return;
    }
    let mut copy = [[0u8; EVENT_SIZE]; MAX];
    for (i, record) in copy.iter_mut().enumerate().take(n).skip(from) {
        for (w, chunk) in record.chunks_exact_mut(8).enumerate() {
            // SAFETY: see above; record i's word w is within the stage.
            let word = unsafe {
                (*stage
                    .add(STAGE_REC + i * EVENT_SIZE + w * 8)
                    .cast::<AtomicU64>())
                .load(Ordering::Relaxed)
            };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
    }
    // The copies before the second read of the generation (seqcount).
    fence(Ordering::Acquire);
    if generation.load(Ordering::Relaxed) != g {
        return;
    }
    queue.extend(&copy[from..n]);
    match book.taken.back_mut() {
        Some((taken_gen, taken)) if *taken_gen == g => *taken = n,
        _ => book.taken.push_back((g, n)),
    }
}

#[cfg(test)]
pub mod testing {
    //! Stages over plain memory, written the way the kernel writes them.
    use super::*;

    /// `cpus` empty stages.
    pub(crate) fn stages(cpus: usize) -> Stages {
        let words: Box<[AtomicU64]> = (0..cpus * STAGE_SIZE / 8)
            .map(|_| AtomicU64::new(0))
            .collect();
        let base = NonNull::from(&words[0]).cast::<u8>();
        Stages::over(Backing::Memory { _words: words }, base, cpus)
    }

    #[expect(clippy::cast_ptr_alignment, reason = "checked just below")]
    fn word(stages: &Stages, offset: usize) -> &AtomicU64 {
        assert_eq!(offset % 8, 0);
        // SAFETY: within the test's memory, which is all atomics.
        unsafe { &*stages.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Appends a record to `cpu`'s stage, as event_begin/event_end do.
    pub(crate) fn stage(stages: &Stages, cpu: usize, record: &Record) {
        let base = cpu * STAGE_SIZE;
        let n_word = word(stages, base + STAGE_N - STAGE_N % 8);
        let shift = (STAGE_N % 8) * 8;
        let n = ((n_word.load(Ordering::Relaxed) >> shift) & 0xffff_ffff) as usize;
        for (w, chunk) in record.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(chunk.try_into().unwrap());
            word(stages, base + STAGE_REC + n * EVENT_SIZE + w * 8).store(v, Ordering::Relaxed);
        }
        set_count(stages, cpu, n + 1);
    }

    fn set_count(stages: &Stages, cpu: usize, n: usize) {
        let base = cpu * STAGE_SIZE;
        let n_word = word(stages, base + STAGE_N - STAGE_N % 8);
        let shift = (STAGE_N % 8) * 8;
        let old = n_word.load(Ordering::Relaxed) & !(0xffff_ffff << shift);
        n_word.store(old | ((n as u64) << shift), Ordering::Release);
    }

    /// What the kernel does once it sent the stage as a batch: nothing
    /// staged, then the next generation (stage_flush's order). Returns the
    /// generation sent.
    pub(crate) fn sent(stages: &Stages, cpu: usize) -> u64 {
        set_count(stages, cpu, 0);
        word(stages, cpu * STAGE_SIZE + STAGE_GEN).fetch_add(1, Ordering::Release)
    }

    /// The queued records of `cpu`, handed out.
    pub(crate) fn queued(stages: &mut Stages, cpu: usize) -> Vec<Record> {
        stages.queues[cpu].drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn rec(tag: u8) -> Record {
        let mut r = [0; EVENT_SIZE];
        r[0] = tag;
        r
    }

    #[test]
    fn staged_records_are_taken_once_each() {
        let mut s = stages(2);
        stage(&s, 1, &rec(1));
        stage(&s, 1, &rec(2));
        s.take();
        assert_eq!(queued(&mut s, 1), [rec(1), rec(2)]);
        assert!(queued(&mut s, 0).is_empty());
        stage(&s, 1, &rec(3));
        s.take();
        s.take();
        assert_eq!(queued(&mut s, 1), [rec(3)], "only the new one, once");
    }

    #[test]
    fn a_batch_starts_after_the_records_taken_from_its_generation() {
        let mut s = stages(1);
        stage(&s, 0, &rec(1));
        stage(&s, 0, &rec(2));
        s.take();
        stage(&s, 0, &rec(3));
        let g = sent(&s, 0);
        // Its batch: records 1, 2, 3, of which the first two were taken.
        assert_eq!(s.parts().1.skip(0, g), 2);
        // The next generation starts from nothing taken.
        stage(&s, 0, &rec(4));
        s.take();
        assert_eq!(queued(&mut s, 0), [rec(1), rec(2), rec(4)]);
        assert_eq!(s.parts().1.skip(0, g + 1), 1);
        assert_eq!(s.parts().1.skip(0, g + 2), 0, "nothing taken of it");
    }

    #[test]
    fn a_generation_whose_batch_came_through_is_not_taken_again() {
        let mut s = stages(1);
        stage(&s, 0, &rec(1));
        // The batch of generation 0 is read from the ring before the stage
        // shows generation 1 (the kernel is between the two).
        assert_eq!(s.parts().1.skip(0, 0), 0);
        s.take();
        assert!(queued(&mut s, 0).is_empty());
        sent(&s, 0);
        stage(&s, 0, &rec(2));
        s.take();
        assert_eq!(queued(&mut s, 0), [rec(2)]);
    }

    #[test]
    fn a_full_stage_the_ring_had_no_room_for_is_taken_whole() {
        let mut s = stages(1);
        for tag in 0..MAX as u8 {
            stage(&s, 0, &rec(tag));
        }
        s.take();
        assert_eq!(queued(&mut s, 0).len(), MAX);
        // Sent later, when the ring has room: all of it was taken.
        let g = sent(&s, 0);
        assert_eq!(s.parts().1.skip(0, g), MAX);
    }
}
