//! Any bytes as a recording: the reader must never panic, and what it
//! returns must add up to its account.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tcptrace::event;
use tcptrace::record::{RecordingReader, replay_report};

fn read(data: &[u8], total: Option<u64>) {
    let Ok(mut reader) = RecordingReader::new(Cursor::new(data), total) else {
        return;
    };
    let mut events = 0u64;
    while let Some(block) = reader.next_block() {
        for record in block.records() {
            events += 1;
            let _ = event::decode(record);
        }
    }
    let account = reader.account();
    assert_eq!(account.events, events);
    assert!(account.bytes_read <= data.len() as u64);
    let _ = account.to_string();
}

fuzz_target!(|data: &[u8]| {
    read(data, Some(data.len() as u64));
    read(data, None);
    // The whole `tcptrace report` pipeline: tracker, aggregator, snapshot.
    if let Ok(mut reader) = RecordingReader::new(Cursor::new(data), Some(data.len() as u64)) {
        let report = replay_report(&mut reader);
        let _ = tcptrace::report::render(&report, tcptrace::report::Format::Json);
        let _ = tcptrace::report::render(&report, tcptrace::report::Format::Text);
    }
});
