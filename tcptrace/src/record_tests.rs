use std::io::Cursor as IoCursor;
use std::net::SocketAddr;

use super::*;
use crate::event::{self, Detail, Event, Task, encode};
use crate::snapshot::Direction;
use crate::tcp::{Family, TcpState};

const NS: u32 = 4_026_532_000;

fn header() -> Header {
    Header {
        record_size: EVENT_SIZE as u16,
        clock_offset_ns: 1_700_000_000_000_000_000,
        started_ns: 1_000,
        lost_at_start: 0,
        synack_retries: 5,
        ephemeral: (32768, 60999),
        kernel: "6.18.0-test".into(),
        hostname: "db-1".into(),
        tcptrace_version: "0.1.0".into(),
        source: "record".into(),
        ports: vec![8080, 9],
        netns: Some(NS),
        reasons: vec![(1, "NO_SOCKET".into()), (11, "TCP_ABORT_ON_CLOSE".into())],
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn state(ts_ns: u64, sock: u64, local: &str, remote: &str, old: TcpState, new: TcpState) -> Event {
    Event {
        ts_ns,
        sock_id: sock,
        id_is_addr: false,
        caught: false,
        netns: NS,
        family: Family::Ipv4,
        local: addr(local),
        remote: addr(remote),
        task: None,
        detail: Detail::State {
            old,
            new,
            srtt_us: (new == TcpState::Established).then_some(40),
            total_retrans: (new == TcpState::Established).then_some(0),
        },
    }
}

/// A listener on :8080 whose server holds `count` connections in CLOSE_WAIT
/// for 300 ms each, and `count` connects refused on :9.
fn workload(count: u64) -> Vec<Event> {
    use TcpState::*;
    const MS: u64 = 1_000_000;
    // (offset, server side?, old, new) of one connection's transitions.
    const CONNECTION: [(u64, bool, TcpState, TcpState); 10] = [
        (0, false, Close, SynSent),
        (10_000, false, SynSent, Established),
        (11_000, true, Listen, SynRecv),
        (12_000, true, SynRecv, Established),
        (MS, false, Established, FinWait1),
        (MS + 1_000, true, Established, CloseWait),
        (MS + 2_000, false, FinWait1, FinWait2),
        (301 * MS, true, CloseWait, LastAck),
        (301 * MS + 5_000, false, FinWait2, Close),
        (301 * MS + 6_000, true, LastAck, Close),
    ];
    let srv = "127.0.0.1:8080";
    let mut listen = state(2_000, 1, srv, "0.0.0.0:0", Close, Listen);
    listen.task = Some(Task {
        pid: 42,
        comm: "server".into(),
        cgroup_id: 7,
    });
    let mut evs = vec![listen];
    for i in 0..count {
        let at = 10 * MS + i * 1_000 * MS;
        let cport = format!("127.0.0.1:{}", 40_000 + i);
        for (offset, server, old, new) in CONNECTION {
            let ev = if server {
                state(at + offset, 200 + i, srv, &cport, old, new)
            } else if old == Close {
                state(at + offset, 100 + i, "127.0.0.1:0", srv, old, new)
            } else {
                state(at + offset, 100 + i, &cport, srv, old, new)
            };
            evs.push(ev);
        }
        // A refused connect to :9: reset sent (no socket), received, closed.
        let (sock, at) = (500 + i, at + 500 * MS);
        let (rport, nine) = (format!("127.0.0.1:{}", 50_000 + i), "127.0.0.1:9");
        evs.push(state(at, sock, "127.0.0.1:0", nine, Close, SynSent));
        let sent = Detail::SendReset {
            state: None,
            reason: Some(1),
        };
        evs.push(Event {
            detail: sent,
            ..state(at + 1_000, 0, nine, &rport, Close, Close)
        });
        evs.push(Event {
            detail: Detail::RecvReset { state: SynSent },
            ..state(at + 2_000, sock, &rport, nine, Close, Close)
        });
        evs.push(state(at + 3_000, sock, &rport, nine, SynSent, Close));
    }
    evs
}

/// A recording of `events` in blocks of `per_block`, the lost counter rising
/// by one per block; closed with an end block when `close`.
fn recording(events: &[Event], per_block: u32, close: bool) -> Vec<u8> {
    let h = header();
    let mut w = RecordingWriter::create(Vec::new(), &h)
        .unwrap()
        .with_block_records(per_block);
    for (i, ev) in events.iter().enumerate() {
        w.set_lost(i as u64 / u64::from(per_block));
        w.push(&encode(ev).to_bytes()).unwrap();
    }
    w.flush_block(0).unwrap();
    if close {
        w.finish(99_000_000_000).unwrap()
    } else {
        std::mem::take(w.get_mut())
    }
}

fn read(bytes: &[u8]) -> Result<(Vec<Block>, Account), OpenError> {
    let mut r = RecordingReader::new(IoCursor::new(bytes), Some(bytes.len() as u64))?;
    let mut blocks = Vec::new();
    while let Some(b) = r.next_block() {
        blocks.push(b);
    }
    Ok((blocks, r.account()))
}

/// Offsets where each block ends, after the header.
fn block_ends(bytes: &[u8]) -> (usize, Vec<usize>) {
    let body = u32::from_le_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let mut at = PREAMBLE_LEN + body;
    let header_end = at;
    let mut ends = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += BLOCK_HEAD_LEN + len;
        ends.push(at);
    }
    (header_end, ends)
}

#[test]
fn header_round_trips_with_every_field() {
    let h = header();
    let bytes = h.encode();
    assert_eq!(&bytes[..8], b"TCPTRACE");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), FORMAT_VERSION);
    let r = RecordingReader::new(IoCursor::new(&bytes), None).unwrap();
    assert_eq!(r.header(), &h);
    assert_eq!(r.version(), FORMAT_VERSION);
    assert_eq!(r.header().reset_reasons().name(11), "TCP_ABORT_ON_CLOSE");
    assert_eq!(
        r.header().clock().wall_ms(1_000_000_000),
        "2023-11-14T22:13:21.000Z"
    );
    // Fields a later writer of the same version appends are skipped.
    let mut more = bytes.clone();
    more.extend_from_slice(b"later");
    let body_len = more.len() - PREAMBLE_LEN;
    more[10..14].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&more[PREAMBLE_LEN..]);
    more[14..18].copy_from_slice(&crc.to_le_bytes());
    let r = RecordingReader::new(IoCursor::new(&more), None).unwrap();
    assert_eq!(r.header(), &h);
    let mut longer = h.clone();
    longer.source = "x".repeat(70_000); // longer than a u16 length: cut, not corrupted
    let bytes = longer.encode();
    let got = RecordingReader::new(IoCursor::new(&bytes), None).unwrap();
    assert_eq!(got.header().source.len(), usize::from(u16::MAX));
}

#[test]
fn this_host_describes_the_running_system() {
    let reasons = ResetReasons::from_pairs([(1, "NO_SOCKET")]);
    let h = Header::this_host("record", Clock::with_offset(5), &reasons, 77);
    assert_eq!(h.record_size as usize, EVENT_SIZE);
    assert_eq!((h.clock_offset_ns, h.started_ns), (5, 77));
    assert!(
        !h.kernel.is_empty() && h.kernel != "unknown",
        "{}",
        h.kernel
    );
    assert!(!h.hostname.is_empty());
    assert_eq!(h.reasons, vec![(1, "NO_SOCKET".to_string())]);
    assert_eq!(h.tcptrace_version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn blocks_round_trip_with_the_lost_counter() {
    let evs = workload(3);
    let bytes = recording(&evs, 5, true);
    let (blocks, account) = read(&bytes).unwrap();
    let records: Vec<Event> = blocks
        .iter()
        .flat_map(|b| b.records().map(|r| event::decode(r).unwrap()))
        .collect();
    assert_eq!(records, evs);
    assert_eq!(blocks.len(), evs.len().div_ceil(5));
    assert!(blocks.iter().all(|b| b.len() <= 5 && !b.is_empty()));
    let lost: Vec<u64> = blocks.iter().map(|b| b.lost).collect();
    assert_eq!(lost[..3], [0, 1, 2]);
    assert!(account.is_complete(), "{account}");
    assert_eq!(account.events, evs.len() as u64);
    assert_eq!(
        account.blocks,
        blocks.len() as u64 + 1,
        "the end block counts"
    );
    assert_eq!(
        (account.bytes_read, account.total_bytes),
        (bytes.len() as u64, Some(bytes.len() as u64))
    );
    assert_eq!(
        account.to_string(),
        format!(
            "{} events read, {} of {} bytes",
            evs.len(),
            bytes.len(),
            bytes.len()
        )
    );
    // flushed_ns: the latest record time of each block.
    assert_eq!(
        blocks[0].flushed_ns,
        evs[..5].iter().map(|e| e.ts_ns).max().unwrap()
    );
}

#[test]
fn the_lost_counter_alone_writes_an_empty_block() {
    let mut w = RecordingWriter::create(Vec::new(), &header()).unwrap();
    w.flush_block(5_000).unwrap(); // nothing to say
    w.set_lost(17);
    w.flush_block(6_000).unwrap();
    let bytes = w.finish(7_000).unwrap();
    let mut r = RecordingReader::new(IoCursor::new(&bytes), None).unwrap();
    let b = r.next_block().unwrap();
    assert!(b.is_empty());
    assert_eq!((b.lost, b.flushed_ns), (17, 6_000));
    assert!(r.next_block().is_none());
    assert_eq!(r.last_flush_ns(), Some(7_000));
    assert!(r.account().is_complete());
}

#[test]
fn a_torn_tail_at_every_byte_keeps_the_complete_blocks_before_it() {
    let evs = workload(1);
    let bytes = recording(&evs, 4, true);
    let (header_end, ends) = block_ends(&bytes);
    assert!(ends.len() >= 4, "several blocks: {ends:?}");
    for cut in 0..bytes.len() {
        let torn = &bytes[..cut];
        if cut < header_end {
            let e = read(torn).unwrap_err();
            assert!(
                matches!(e, OpenError::Truncated { have, .. } if have == cut as u64),
                "cut {cut}: {e}"
            );
            continue;
        }
        let (blocks, account) = read(torn).unwrap();
        let complete = ends.iter().filter(|e| **e <= cut).count();
        let good_end = if complete == 0 {
            header_end
        } else {
            ends[complete - 1]
        };
        let events: usize = blocks.iter().map(Block::len).sum();
        assert_eq!(blocks.len(), complete, "cut {cut}");
        assert_eq!(account.events, events as u64, "cut {cut}");
        assert_eq!(account.bytes_read, good_end as u64, "cut {cut}");
        assert_eq!(account.total_bytes, Some(cut as u64));
        assert!(!account.ended, "cut {cut}: the end block is the last");
        if cut == good_end {
            assert_eq!(account.tail, None, "cut {cut} on a block boundary");
            assert!(account.to_string().contains("no end block"), "{account}");
        } else {
            let tail = account.tail.clone().unwrap();
            assert_eq!(tail.at, good_end as u64, "cut {cut}");
            assert!(
                matches!(tail.problem, TailProblem::Short { have, .. } if have == (cut - good_end) as u64),
                "cut {cut}: {:?}",
                tail.problem
            );
            assert!(
                account
                    .to_string()
                    .contains(&format!("tail torn at byte {good_end}: short block")),
                "{account}"
            );
        }
        // Without knowing the size, the reader finds the same by reading.
        let mut r = RecordingReader::new(IoCursor::new(torn), None).unwrap();
        let mut n = 0;
        while r.next_block().is_some() {
            n += 1;
        }
        assert_eq!((n, r.account().bytes_read), (complete, good_end as u64));
        assert_eq!(r.account().tail.map(|t| t.at), account.tail.map(|t| t.at));
    }
}

#[test]
fn wrong_magic_future_version_and_bad_header_are_clear_errors() {
    let good = recording(&workload(1), 8, true);
    let msg = |b: &[u8]| read(b).unwrap_err().to_string();

    assert_eq!(
        msg(b"PK\x03\x04 a zip file"),
        r#"not a tcptrace recording (it begins with "PK\x03\x04 a z", not "TCPTRACE")"#
    );
    assert_eq!(msg(b""), "truncated header: 0 of 18 bytes");
    assert_eq!(msg(b"TCPT"), "truncated header: 4 of 18 bytes");

    let mut future = good.clone();
    future[8..10].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(
        msg(&future),
        format!(
            "recording format version 7 is not supported: this tcptrace ({}) reads version 1; use a newer tcptrace",
            env!("CARGO_PKG_VERSION")
        )
    );
    let mut zero = good.clone();
    zero[8..10].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        read(&zero).unwrap_err(),
        OpenError::UnsupportedVersion(0)
    ));

    let mut bad_crc = good.clone();
    bad_crc[PREAMBLE_LEN + 3] ^= 0x10;
    assert_eq!(
        msg(&bad_crc),
        "header checksum mismatch: the header is corrupted"
    );

    let mut huge = good.clone();
    huge[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(msg(&huge).starts_with("malformed header: header length"));

    // A well-checksummed body that lies about its contents.
    let mut body = vec![0u8; 20];
    body[..2].copy_from_slice(&112u16.to_le_bytes());
    let mut lie = Vec::new();
    lie.extend_from_slice(MAGIC);
    lie.extend_from_slice(&1u16.to_le_bytes());
    lie.extend_from_slice(&(body.len() as u32).to_le_bytes());
    lie.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    lie.extend_from_slice(&body);
    assert_eq!(
        msg(&lie),
        "malformed header: ends inside started_ns",
        "names the field"
    );

    let mut small = header();
    small.record_size = 64;
    assert!(
        msg(&small.encode()).contains("records of 64 bytes are shorter"),
        "{}",
        msg(&small.encode())
    );
}

#[test]
fn a_corrupted_block_in_the_middle_stops_the_reader_there() {
    let evs = workload(2);
    let bytes = recording(&evs, 4, true);
    let (_, ends) = block_ends(&bytes);
    // Flip one bit inside the third block's records.
    let mut bad = bytes.clone();
    bad[ends[1] + BLOCK_HEAD_LEN + PAYLOAD_HEAD_LEN + 30] ^= 0x04;
    let (blocks, account) = read(&bad).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(account.events, 8);
    assert_eq!(
        account.tail,
        Some(Tail {
            at: ends[1] as u64,
            problem: TailProblem::Checksum
        })
    );
    assert_eq!(
        account.to_string(),
        format!(
            "8 events read, {} of {} bytes; tail torn at byte {}: block checksum mismatch",
            ends[1],
            bytes.len(),
            ends[1]
        )
    );

    let mut bad_len = bytes.clone();
    bad_len[ends[0] + 4..ends[0] + 8].copy_from_slice(&5u32.to_le_bytes());
    let (_, a) = read(&bad_len).unwrap();
    assert_eq!(a.tail.unwrap().problem, TailProblem::BadLength(5));

    let mut past_end = bytes.clone();
    past_end[ends[0] + 4..ends[0] + 8].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let (_, a) = read(&past_end).unwrap();
    assert!(matches!(
        a.tail.unwrap().problem,
        TailProblem::Short { need, .. } if need == BLOCK_HEAD_LEN as u64 + (1 << 20)
    ));

    let mut bad_magic = bytes.clone();
    bad_magic[ends[0]] = b'X';
    let (_, a) = read(&bad_magic).unwrap();
    assert_eq!(a.tail.unwrap().problem, TailProblem::BadMagic);

    let mut garbage = bytes.clone();
    garbage.extend_from_slice(b"junk");
    let (blocks, a) = read(&garbage).unwrap();
    assert_eq!(blocks.iter().map(Block::len).sum::<usize>(), evs.len());
    assert!(a.ended && !a.is_complete());
    assert_eq!(a.tail.clone().unwrap().problem, TailProblem::AfterEnd(4));
    assert!(
        a.to_string()
            .ends_with("4 bytes of garbage after the end block")
    );
}

#[test]
fn a_block_whose_count_disagrees_with_its_length_is_malformed() {
    let bytes = recording(&workload(1), 4, true);
    let (_, ends) = block_ends(&bytes);
    let mut bad = bytes.clone();
    let payload = ends[0] + BLOCK_HEAD_LEN;
    let len = u32::from_le_bytes(bad[ends[0] + 4..ends[0] + 8].try_into().unwrap()) as usize;
    bad[payload + 4..payload + 8].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32fast::hash(&bad[payload..payload + len]);
    bad[ends[0] + 8..ends[0] + 12].copy_from_slice(&crc.to_le_bytes());
    let (blocks, a) = read(&bad).unwrap();
    assert_eq!(blocks.len(), 1);
    assert!(matches!(a.tail.unwrap().problem, TailProblem::Malformed(_)));
}

#[test]
fn blocks_of_unknown_kinds_are_skipped() {
    let evs = workload(1);
    let bytes = recording(&evs, 4, true);
    let (_, ends) = block_ends(&bytes);
    let mut later = bytes.clone();
    let payload = ends[0] + BLOCK_HEAD_LEN;
    let len = u32::from_le_bytes(later[ends[0] + 4..ends[0] + 8].try_into().unwrap()) as usize;
    later[payload] = 9;
    let crc = crc32fast::hash(&later[payload..payload + len]);
    later[ends[0] + 8..ends[0] + 12].copy_from_slice(&crc.to_le_bytes());
    let (blocks, a) = read(&later).unwrap();
    assert_eq!(
        blocks.iter().map(Block::len).sum::<usize>(),
        evs.len() - 4,
        "the skipped block's records"
    );
    assert!(a.is_complete(), "{a}");
}

/// The report of a recording is what the live pipeline (tracker and
/// aggregator fed the same events) shows, with the recording's span.
#[test]
fn replay_reports_what_the_live_pipeline_saw() {
    let evs = workload(4);
    let bytes = recording(&evs, 6, true);
    let mut r = RecordingReader::new(IoCursor::new(&bytes), None).unwrap();
    let report = replay_report(&mut r);
    assert!(r.account().is_complete());

    let h = header();
    let mut tracker = Tracker::new(100);
    let mut agg = Aggregator::new(h.aggregator_config(), h.started_ns);
    for ev in &evs {
        let note = tracker.observe(ev);
        agg.add(ev, &note, &tracker);
    }
    let last = evs.iter().map(|e| e.ts_ns).max().unwrap();
    agg.set_lost(evs.len() as u64 / 6, 0);
    let mut live = agg.snapshot(&tracker, last, h.clock().wall_ms(last), &h.reset_reasons());
    let findings_cfg = crate::findings::FindingsConfig {
        ephemeral: h.aggregator_config().ephemeral,
        ..crate::findings::FindingsConfig::default()
    };
    live.findings = crate::findings::evaluate(&live, report.interval_s, &findings_cfg);
    assert_eq!(report.snapshot, live);
    // The recording's losses are part of its findings too.
    assert_eq!(report.snapshot.findings[0].rule.name(), "lost_events");
    assert_eq!(report.report, "recording");
    assert!((report.interval_s - (99e9 - 1_000.0) / 1e9).abs() < 1e-9);

    let s = &report.snapshot;
    let srv = s.port(8080, Direction::In).unwrap();
    let cw = &srv.states[&TcpState::CloseWait];
    assert_eq!(cw.entered, 4);
    let dwell = cw.dwell.as_ref().unwrap();
    assert_eq!(dwell.count, 4);
    assert!((297_000..=303_000).contains(&dwell.p50_us), "{dwell:?}");
    assert_eq!(srv.handshakes.completed, 4);
    let rst = s.port(9, Direction::In).unwrap();
    assert_eq!(rst.resets_sent[0].reason, "NO_SOCKET", "the header's names");
    assert_eq!(rst.resets_sent[0].count, 4);
    let refused = s.port(9, Direction::Out).unwrap();
    assert_eq!(refused.resets_received[&TcpState::SynSent], 4);
    assert_eq!(s.events.lost, evs.len() as u64 / 6);
    assert_eq!(s.events.total, evs.len() as u64);
}

#[test]
fn replay_counts_records_that_do_not_decode_and_subtracts_earlier_losses() {
    let mut h = header();
    h.lost_at_start = 10;
    let mut w = RecordingWriter::create(Vec::new(), &h).unwrap();
    let mut bad = encode(&workload(1)[0]);
    bad.kind = 99;
    w.push(&bad.to_bytes()).unwrap();
    w.push(&encode(&workload(1)[0]).to_bytes()).unwrap();
    w.push(b"short").unwrap(); // zero-padded: family 0 does not decode
    w.set_lost(13);
    let bytes = w.finish(5_000_000_000).unwrap();
    let mut r = RecordingReader::new(IoCursor::new(&bytes), None).unwrap();
    let report = replay_report(&mut r);
    assert_eq!(report.snapshot.events.undecodable, 2);
    assert_eq!(report.snapshot.events.total, 1);
    assert_eq!(report.snapshot.events.lost, 3);
}

#[test]
fn raw_filters_match_either_port_and_the_netns() {
    let ev = encode(&workload(1)[1]).to_bytes(); // 127.0.0.1:0 -> :8080
    assert!(raw_matches(&ev, &[], None));
    assert!(raw_matches(&ev, &[8080], Some(NS)));
    assert!(raw_matches(&ev, &[0], None));
    assert!(!raw_matches(&ev, &[9], None));
    assert!(!raw_matches(&ev, &[], Some(NS + 1)));
    assert!(raw_matches(b"short", &[], None));
    assert!(!raw_matches(b"short", &[80], None));
}

/// A seeded pseudo-random generator (splitmix64): the same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reads a whole (possibly damaged) recording, decoding and rendering every
/// record as `events --from` and `report` would.
fn read_everything(bytes: &[u8], total: Option<u64>) -> Result<Account, OpenError> {
    let mut r = RecordingReader::new(IoCursor::new(bytes), total)?;
    let clock = r.header().clock();
    let reasons = r.header().reset_reasons();
    let mut tracker = Tracker::new(64);
    let mut events = 0u64;
    while let Some(b) = r.next_block() {
        for rec in b.records() {
            events += 1;
            if let Ok(ev) = event::decode(rec) {
                let note = tracker.observe(&ev);
                let _ = crate::format::text_line(&ev, &note, clock, &reasons);
                let _ = crate::format::json_line(&ev, &note, clock, &reasons);
            }
        }
    }
    let a = r.account();
    assert_eq!(a.events, events, "the account counts what was returned");
    assert!(a.bytes_read <= bytes.len() as u64);
    Ok(a)
}

/// The stable-toolchain stand-in for `cargo fuzz run recording_reader` (see
/// fuzz/): thousands of truncated, bit-flipped, overwritten and spliced
/// recordings. None may panic; every damaged one must be reported, either as
/// an error opening it or in the account. `TCPTRACE_FUZZ_ITERS` and
/// `TCPTRACE_FUZZ_SEED` run more or other cases.
#[test]
fn damaged_recordings_never_panic_and_are_always_reported() {
    let iters: usize = std::env::var("TCPTRACE_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let seed: u64 = std::env::var("TCPTRACE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7C97_EACE);
    let mut rng = Rng(seed);
    let good = recording(&workload(3), 7, true);
    let clean = read_everything(&good, Some(good.len() as u64)).unwrap();
    assert!(clean.is_complete());
    for i in 0..iters {
        let mut b = good.clone();
        let what = i % 5;
        match what {
            // Truncation.
            0 => b.truncate(rng.below(good.len())),
            // 1 to 8 bit flips.
            1 => {
                for _ in 0..=rng.below(8) {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
            }
            // A run of random bytes written over the file.
            2 => {
                let at = rng.below(b.len());
                let n = 1 + rng.below(64).min(b.len() - at - 1);
                for x in &mut b[at..at + n] {
                    *x = rng.next() as u8;
                }
            }
            // Random garbage after a valid header, or the whole file.
            3 => {
                let keep = if rng.below(2) == 0 {
                    0
                } else {
                    block_ends(&good).0
                };
                b.truncate(keep);
                for _ in 0..rng.below(2048) {
                    b.push(rng.next() as u8);
                }
            }
            // Splice: a chunk of the file copied elsewhere.
            _ => {
                let from = rng.below(b.len());
                let n = 1 + rng.below(600).min(b.len() - from - 1);
                let chunk = b[from..from + n].to_vec();
                let at = rng.below(b.len());
                b.splice(at..at, chunk);
            }
        }
        let changed = b != good;
        for total in [Some(b.len() as u64), None] {
            match read_everything(&b, total) {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(a) => {
                    if changed {
                        // Spliced whole blocks make a valid file with more events.
                        assert!(
                            !a.is_complete() || a.events != clean.events,
                            "case {i} ({what}): damage went unnoticed: {a}"
                        );
                    }
                }
            }
        }
    }
}

/// `decode` on random bytes: never a panic, and whatever decodes encodes back
/// to a record that decodes to the same event.
#[test]
fn random_records_decode_or_fail_cleanly() {
    let mut rng = Rng(0x00DE_C0DE);
    let clock = Clock::with_offset(0);
    let reasons = ResetReasons::default();
    let mut tracker = Tracker::new(1024);
    let mut agg = Aggregator::new(AggregatorConfig::default(), 0);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..20_000 {
        let len = if i % 10 == 0 {
            rng.below(2 * EVENT_SIZE)
        } else {
            EVENT_SIZE
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= EVENT_SIZE && i % 2 == 0 {
            // Often a plausible kind and family, so decoding goes deep.
            bytes[90] = 1 + rng.below(5) as u8; // kind
            let fam: u16 = if rng.below(2) == 0 { 2 } else { 10 };
            bytes[88..90].copy_from_slice(&fam.to_le_bytes());
        }
        match event::decode(&bytes) {
            Ok(ev) => {
                ok += 1;
                // encode() cuts comm at 15 bytes, maybe inside a UTF-8
                // sequence that decode() made of invalid bytes: compare the rest.
                let again = event::decode(&encode(&ev).to_bytes()).unwrap();
                let pid = |e: &Event| e.task.as_ref().map(|t| (t.pid, t.cgroup_id));
                assert_eq!(pid(&again), pid(&ev));
                assert_eq!(
                    Event {
                        task: None,
                        ..again
                    },
                    Event {
                        task: None,
                        ..ev.clone()
                    }
                );
                let note = tracker.observe(&ev);
                agg.add(&ev, &note, &tracker);
                if ok % 1_000 == 0 {
                    let snap = agg.snapshot(&tracker, rng.next(), String::new(), &reasons);
                    assert!(snap.events.total > 0);
                }
                assert!(!crate::format::text_line(&ev, &note, clock, &reasons).is_empty());
                assert!(crate::format::json_line(&ev, &note, clock, &reasons).starts_with('{'));
            }
            Err(e) => {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        ok > 5_000 && failed > 5_000,
        "{ok} decoded, {failed} failed"
    );
}

/// Found by the randomized tests: absurd values in well-formed records
/// (a SYN-ACK "first sent" ~584,000 years ago) must not overflow the
/// arithmetic of the report.
#[test]
fn absurd_values_in_valid_records_do_not_overflow() {
    use TcpState::*;
    let (l, r) = ("127.0.0.1:8080", "127.0.0.1:40000");
    let evs = [
        state(10, 1, l, "0.0.0.0:0", Close, Listen),
        Event {
            detail: Detail::SynackRetrans {
                retrans: 5,
                since_first_us: u64::MAX,
            },
            ..state(u64::MAX - 10_000, 1, l, r, Listen, Listen)
        },
        state(u64::MAX, 2, l, r, SynRecv, Established),
    ];
    let bytes = recording(&evs, 8, true);
    let mut reader = RecordingReader::new(IoCursor::new(&bytes), None).unwrap();
    let report = replay_report(&mut reader);
    let row = report.snapshot.port(8080, Direction::In).unwrap();
    assert_eq!(row.handshakes.completed, 1);
    for ev in &evs {
        let line = crate::format::text_line(
            ev,
            &crate::track::Note::default(),
            header().clock(),
            &ResetReasons::default(),
        );
        assert!(!line.is_empty());
    }
}
