//! Drains the BPF ring buffers and the per-CPU stages.
//!
//! The programs submit without waking userspace (`BPF_RB_NO_WAKEUP`): a wake-up
//! per event costs more than the rest of the pipeline. The reader therefore
//! wakes on a short timer, or earlier when the kernel forces a wake-up because
//! the ring passed its fill threshold, and then drains every ring.
//! It takes any number of rings so that many-core hosts can use one per CPU.
//!
//! Every ring record is a batch of records (tcptrace.h: `struct
//! tcptrace_batch`) that one CPU staged; records still staged are taken from
//! the stages in place ([`crate::stage`]). Each CPU's ring, its stage and the
//! nested ring are each in time order, and the reader merges them by
//! timestamp, up to the moment the drain began: a record staged on one CPU
//! may not be visible yet while a later event of the same socket, on another
//! CPU, already is, but that later event happened after the drain began.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::{Ordering, fence};
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result};
use tcptrace_ebpf::EVENT_SIZE;
use tcptrace_ebpf::batch;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::clock::Clock;
use crate::ringbuf::{Head, Ring};
use crate::stage::{Books, Record, Stages};

/// Default interval between drains when no wake-up arrives.
pub const DEFAULT_POLL: Duration = Duration::from_millis(10);

/// What the loaded programs write to: each CPU's ring (CPU c writes to ring
/// c % rings), the ring of records written by a program that interrupted
/// another, and the stages.
pub struct Sources {
    pub rings: Vec<Ring>,
    pub nested: Ring,
    pub stages: Stages,
}

pub struct Reader {
    /// The CPUs' rings, then the nested ring.
    rings: Vec<AsyncFd<Ring>>,
    merge: Merging,
    poll: Duration,
}

impl Reader {
    pub fn new(sources: Sources, poll: Duration) -> Result<Self> {
        let Sources {
            rings,
            nested,
            stages,
        } = sources;
        let merge = Merging::new(rings.len(), stages);
        let mut registered = Vec::with_capacity(rings.len() + 1);
        for ring in rings.into_iter().chain([nested]) {
            // SAFETY: the fd belongs to the ring's map, which the AsyncFd
            // owns: it stays open, and the same, until the AsyncFd is dropped.
            let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("register the ring buffer with tokio")?;
            registered.push(fd);
        }
        Ok(Self {
            rings: registered,
            merge,
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

    /// Hands every record older than this call to `f`, oldest first, from
    /// the rings and the stages; returns how many. Merged by the records'
    /// kernel timestamp (their first 8 bytes), so that one socket's events,
    /// written from different CPUs, reach the tracker in the order they
    /// happened. Younger records wait for the next drain.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let until = Clock::monotonic_now_ns();
        // The clock read before any stage or ring is looked at: a record not
        // visible below was completed after this, and so was any later
        // event of its socket (see the module comment).
        fence(Ordering::SeqCst);
        let mut rings: Vec<&mut Ring> = self.rings.iter_mut().map(AsyncFd::get_mut).collect();
        let n = self.merge.drain(&mut rings, until, &mut f);
        for ring in rings {
            ring.publish();
        }
        n
    }
}

/// What the merge keeps between drains.
struct Merging {
    /// Where reading stands in each ring's current batch: the CPUs' rings,
    /// then the nested ring.
    cursors: Vec<Cursor>,
    stages: Stages,
    /// With fewer rings than CPUs, a ring carries the batches of several
    /// CPUs, each CPU's in order but not in order between them: the
    /// records are moved out, into a queue per CPU, which is in order.
    sorted: Option<Vec<VecDeque<Record>>>,
}

impl Merging {
    fn new(rings: usize, stages: Stages) -> Self {
        let cpus = stages.cpus();
        // The nested ring's records were never staged: nothing to skip.
        let cursors = (0..=rings)
            .map(|i| Cursor {
                open: None,
                staged: i < rings,
            })
            .collect();
        let sorted = (rings < cpus).then(|| (0..cpus).map(|_| VecDeque::new()).collect());
        Self {
            cursors,
            stages,
            sorted,
        }
    }

    /// Takes what the stages hold, then merges rings and stages up to
    /// `until` (see [`Reader::drain`]). `rings`: the CPUs' rings, then the
    /// nested ring.
    fn drain(&mut self, rings: &mut [&mut Ring], until: u64, f: &mut impl FnMut(&[u8])) -> usize {
        self.stages.take();
        let (staged, books) = self.stages.parts();
        let (Some((nested, cpu_rings)), Some((nested_cursor, cpu_cursors))) =
            (rings.split_last_mut(), self.cursors.split_last_mut())
        else {
            return 0;
        };
        let mut sources: Vec<Source<'_>> = Vec::new();
        match &mut self.sorted {
            Some(sorted) => {
                for ring in cpu_rings {
                    sort_out(ring, books, sorted);
                }
                sources.extend(sorted.iter_mut().map(Source::Queue));
            }
            None => sources.extend(
                cpu_rings
                    .iter_mut()
                    .zip(cpu_cursors)
                    .map(|(ring, cursor)| Source::Ring { ring, cursor }),
            ),
        }
        sources.push(Source::Ring {
            ring: nested,
            cursor: nested_cursor,
        });
        sources.extend(staged.iter_mut().map(Source::Queue));
        merge(&mut sources, books, until, f)
    }
}

/// Moves every batch in a ring that several CPUs write into the queue of
/// its CPU, after the records already taken from the stage: a copy per
/// record, which a ring per CPU spares.
fn sort_out(ring: &mut Ring, books: &mut Books, queues: &mut [VecDeque<Record>]) {
    while let Some(head) = ring.head() {
        let bytes = ring.bytes(&head);
        match batch_header(bytes) {
            Some((generation, cpu, count)) if (cpu as usize) < queues.len() => {
                let from = books.skip(cpu, generation);
                let records = bytes[batch::HEADER..batch::HEADER + count * EVENT_SIZE]
                    .chunks_exact(EVENT_SIZE)
                    .skip(from)
                    .filter_map(|r| Record::try_from(r).ok());
                queues[cpu as usize].extend(records);
            }
            _ => not_a_batch(bytes.len()),
        }
        ring.consume(head);
    }
}

/// No program of ours writes anything but batches: this would be a layout
/// mismatch between the two sides.
fn not_a_batch(len: usize) {
    log::warn!("skipped a ring record of {len} bytes that is not a batch");
}

/// A ring's batch being read: its ring record and the next record in it.
struct Cursor {
    open: Option<Open>,
    /// Whether its batches' records were staged, and some may have been
    /// taken from the stage already.
    staged: bool,
}

struct Open {
    head: Head,
    count: usize,
    next: usize,
}

/// The header of a batch, and whether its records are all there.
fn batch_header(bytes: &[u8]) -> Option<(u64, u32, usize)> {
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    let generation = u64::from_ne_bytes(field(batch::GEN, 8)?.try_into().ok()?);
    let cpu = u32::from_ne_bytes(field(batch::CPU, 4)?.try_into().ok()?);
    let count = usize::from(u16::from_ne_bytes(field(batch::COUNT, 2)?.try_into().ok()?));
    (bytes.len() >= batch::HEADER + count * EVENT_SIZE).then_some((generation, cpu, count))
}

/// A source of records in time order.
trait Records {
    type Head;
    fn head(&mut self, books: &mut Books) -> Option<Self::Head>;
    fn bytes(&self, head: &Self::Head) -> &[u8];
    fn consume(&mut self, head: Self::Head);
}

enum Source<'a> {
    /// A ring's batches, read in place.
    Ring {
        ring: &'a mut Ring,
        cursor: &'a mut Cursor,
    },
    /// Records copied out for a CPU: taken from its stage, or sorted out
    /// of a ring it shares.
    Queue(&'a mut VecDeque<Record>),
}

impl Records for Source<'_> {
    /// Where the record starts in its batch's bytes (rings only).
    type Head = usize;

    fn head(&mut self, books: &mut Books) -> Option<usize> {
        let (ring, cursor) = match self {
            Source::Ring { ring, cursor } => (ring, cursor),
            Source::Queue(queue) => return (!queue.is_empty()).then_some(0),
        };
        loop {
            if let Some(open) = &cursor.open {
                let at = batch::HEADER + open.next * EVENT_SIZE;
                prefetch_ahead(ring.bytes(&open.head).get(at..).unwrap_or_default());
                return Some(at);
            }
            let head = ring.head()?;
            let Some((generation, cpu, count)) = batch_header(ring.bytes(&head)) else {
                not_a_batch(ring.bytes(&head).len());
                ring.consume(head);
                continue;
            };
            let next = if cursor.staged {
                books.skip(cpu, generation)
            } else {
                0
            };
            if next < count {
                cursor.open = Some(Open { head, count, next });
            } else {
                ring.consume(head);
            }
        }
    }

    fn bytes(&self, at: &usize) -> &[u8] {
        match self {
            Source::Ring { ring, cursor } => cursor.open.as_ref().map_or(&[], |open| {
                ring.bytes(&open.head)
                    .get(*at..*at + EVENT_SIZE)
                    .unwrap_or_default()
            }),
            Source::Queue(queue) => queue.front().map_or(&[], |r| &r[..]),
        }
    }

    fn consume(&mut self, _: usize) {
        match self {
            Source::Ring { ring, cursor } => {
                let Some(open) = &mut cursor.open else { return };
                open.next += 1;
                if open.next >= open.count
                    && let Some(open) = cursor.open.take()
                {
                    ring.consume(open.head);
                }
            }
            Source::Queue(queue) => {
                queue.pop_front();
            }
        }
    }
}

/// Asks for the records a few ahead of `record` while it is processed: the
/// kernel wrote them moments ago, often on the other CPU, so reading them
/// waits for their lines. Measured on its own (A/B of the daemon under
/// churn): 4 % less daemon CPU.
#[inline(always)]
fn prefetch_ahead(record: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let ahead = record.as_ptr().wrapping_add(PREFETCH_BYTES);
        _mm_prefetch(ahead.cast(), _MM_HINT_T0);
        _mm_prefetch(ahead.wrapping_add(64).cast(), _MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = record;
}

/// Four records ahead in a batch.
const PREFETCH_BYTES: usize = 4 * EVENT_SIZE;

/// The kernel timestamp that starts a record.
fn timestamp(record: &[u8]) -> u64 {
    record
        .get(..8)
        .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Merges sources that are each in time order: `f` gets every record older
/// than `until`, oldest first; ties go to the lower source. Records are
/// read in place, and each is consumed once `f` has it. One comparison per
/// source and record: for the few rings a host uses, cheaper than sorting a
/// drain.
fn merge<R: Records>(
    sources: &mut [R],
    books: &mut Books,
    until: u64,
    f: &mut impl FnMut(&[u8]),
) -> usize {
    // Each head with its timestamp, read once.
    let mut next = |src: &mut R| {
        let head = src.head(books)?;
        Some((timestamp(src.bytes(&head)), head))
    };
    let mut heads: Vec<Option<(u64, R::Head)>> = sources.iter_mut().map(&mut next).collect();
    let mut n = 0;
    loop {
        let mut oldest: Option<(usize, u64)> = None;
        for (i, head) in heads.iter().enumerate() {
            if let Some((ts, _)) = *head
                && oldest.is_none_or(|(_, t)| ts < t)
            {
                oldest = Some((i, ts));
            }
        }
        let Some((i, _)) = oldest.filter(|&(_, ts)| ts < until) else {
            return n;
        };
        let Some((_, head)) = heads[i].take() else {
            return n;
        };
        f(sources[i].bytes(&head));
        n += 1;
        sources[i].consume(head);
        heads[i] = next(&mut sources[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ringbuf::testing::{produced, ring, write};
    use crate::stage::testing::{sent, stage, stages};

    #[test]
    fn records_of_several_sources_come_out_in_timestamp_order() {
        let rec = |ts: u64, tag: u8| {
            let mut r = ts.to_ne_bytes().to_vec();
            r.push(tag);
            r
        };
        // Each source in time order, as the kernel writes them.
        let mut rings = [
            vec![rec(10, b'a'), rec(30, b'c'), rec(40, b'e')],
            vec![rec(10, b'b'), rec(35, b'd')],
            vec![],
            vec![rec(50, b'f')],
        ]
        .map(VecDeque::from);
        let mut seen = Vec::new();
        let n = merge(
            &mut rings,
            &mut Books::default(),
            u64::MAX,
            &mut |r: &[u8]| {
                seen.push(r[8]);
            },
        );
        assert_eq!(n, 6);
        assert_eq!(seen, b"abcdef", "by time; equal times go to the lower ring");
        assert!(rings.iter().all(VecDeque::is_empty));
    }

    /// A record of the given timestamp, tagged in its last byte.
    fn event(ts: u64, tag: u8) -> Record {
        let mut r = [0; EVENT_SIZE];
        r[..8].copy_from_slice(&ts.to_ne_bytes());
        r[EVENT_SIZE - 1] = tag;
        r
    }

    /// A batch as the kernel sends it: header, then the records.
    fn batch_of(cpu: u32, generation: u64, records: &[Record]) -> Vec<u8> {
        let mut b = vec![0; batch::HEADER];
        b[batch::GEN..batch::GEN + 8].copy_from_slice(&generation.to_ne_bytes());
        b[batch::CPU..batch::CPU + 4].copy_from_slice(&cpu.to_ne_bytes());
        let count = u16::try_from(records.len()).unwrap();
        b[batch::COUNT..batch::COUNT + 2].copy_from_slice(&count.to_ne_bytes());
        for r in records {
            b.extend_from_slice(r);
        }
        b
    }

    /// Drains `rings` (the CPUs' rings, then the nested ring) and the
    /// stages up to `until`; returns the tags handed out.
    fn drain(merging: &mut Merging, rings: &mut [Ring], until: u64) -> Vec<u8> {
        let mut rings: Vec<&mut Ring> = rings.iter_mut().collect();
        let mut tags = Vec::new();
        merging.drain(&mut rings, until, &mut |r: &[u8]| {
            tags.push(r[EVENT_SIZE - 1]);
        });
        tags
    }

    /// Writes batches one after the other into `ring` and publishes them.
    fn send(ring: &Ring, at: u64, batches: &[Vec<u8>]) -> u64 {
        let end = batches.iter().fold(at, |at, b| write(ring, at, b, 0));
        produced(ring, end);
        end
    }

    #[test]
    fn batches_merge_by_time_and_a_batch_read_in_part_resumes_next_drain() {
        let mut rings = [ring(4096, 0), ring(4096, 0), ring(4096, 0)];
        send(
            &rings[0],
            0,
            &[batch_of(0, 0, &[event(10, 1), event(30, 3), event(50, 5)])],
        );
        send(&rings[1], 0, &[batch_of(1, 0, &[event(20, 2)])]);
        send(&rings[2], 0, &[batch_of(1, 0, &[event(40, 4)])]);
        let mut m = Merging::new(2, stages(2));
        assert_eq!(drain(&mut m, &mut rings, 45), [1, 2, 3, 4]);
        assert_eq!(drain(&mut m, &mut rings, 45), [0u8; 0], "50 is younger");
        assert_eq!(drain(&mut m, &mut rings, 60), [5]);
        rings[0].publish();
        assert!(rings[0].head().is_none(), "the whole batch consumed");
    }

    #[test]
    fn staged_records_merge_in_time_and_are_not_read_again_from_their_batch() {
        let mut rings = [ring(4096, 0), ring(4096, 0), ring(4096, 0)];
        let mut m = Merging::new(2, stages(2));
        // CPU 1 staged two records and went quiet; CPU 0 sent a batch.
        stage(&m.stages, 1, &event(15, 2));
        stage(&m.stages, 1, &event(25, 3));
        send(
            &rings[0],
            0,
            &[batch_of(0, 0, &[event(10, 1), event(30, 4)])],
        );
        assert_eq!(drain(&mut m, &mut rings, 100), [1, 2, 3, 4]);
        // CPU 1 stages a third record, and sends all three as one batch:
        // only the third is new.
        stage(&m.stages, 1, &event(35, 5));
        let g = sent(&m.stages, 1);
        let batch = batch_of(1, g, &[event(15, 2), event(25, 3), event(35, 5)]);
        send(&rings[1], 0, &[batch]);
        assert_eq!(drain(&mut m, &mut rings, 100), [5]);
    }

    #[test]
    fn the_nested_ring_skips_nothing() {
        let mut rings = [ring(4096, 0), ring(4096, 0)];
        let mut m = Merging::new(1, stages(1));
        stage(&m.stages, 0, &event(10, 1));
        assert_eq!(drain(&mut m, &mut rings, 100), [1]);
        // A nested record of the same CPU, generation 0 like the stage.
        send(&rings[1], 0, &[batch_of(0, 0, &[event(20, 2)])]);
        assert_eq!(drain(&mut m, &mut rings, 100), [2]);
    }

    #[test]
    fn a_ring_two_cpus_share_is_sorted_out_by_cpu_and_merged_in_time() {
        // One ring for two CPUs: CPU 1's batch was sent before CPU 0's,
        // whose records are older.
        let mut rings = [ring(4096, 0), ring(4096, 0)];
        let mut m = Merging::new(1, stages(2));
        stage(&m.stages, 0, &event(10, 1));
        let end = send(
            &rings[0],
            0,
            &[batch_of(1, 0, &[event(20, 3), event(40, 5)])],
        );
        assert_eq!(drain(&mut m, &mut rings, 30), [1, 3]);
        // CPU 0's stage sent, with the record already taken from it.
        stage(&m.stages, 0, &event(15, 2));
        stage(&m.stages, 0, &event(30, 4));
        let g = sent(&m.stages, 0);
        let batch = batch_of(0, g, &[event(10, 1), event(15, 2), event(30, 4)]);
        send(&rings[0], end, &[batch]);
        assert_eq!(drain(&mut m, &mut rings, 100), [2, 4, 5]);
        assert!(rings[0].head().is_none(), "a shared ring is emptied");
    }

    /// A queue as a source: the head is the front record.
    impl Records for VecDeque<Vec<u8>> {
        type Head = ();
        fn head(&mut self, _: &mut Books) -> Option<()> {
            (!self.is_empty()).then_some(())
        }
        fn bytes(&self, (): &()) -> &[u8] {
            &self[0]
        }
        fn consume(&mut self, (): ()) {
            self.pop_front();
        }
    }
}
