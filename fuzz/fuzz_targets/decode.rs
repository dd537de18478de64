//! Any bytes as a ring-buffer record: `decode` returns an event or an error,
//! never panics, and both renderings of what it decodes work.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::clock::Clock;
use tcptrace::event;
use tcptrace::format;
use tcptrace::reasons::ResetReasons;
use tcptrace::track::Tracker;
use tcptrace_ebpf::EVENT_SIZE;

fuzz_target!(|data: &[u8]| {
    let reasons = ResetReasons::from_pairs([(1, "NO_SOCKET"), (11, "TCP_ABORT_ON_CLOSE")]);
    let clock = Clock::with_offset(1_700_000_000_000_000_000);
    let mut tracker = Tracker::new(64);
    // One record, then the rest as a stream of records for the tracker.
    for chunk in std::iter::once(data).chain(data.chunks(EVENT_SIZE)) {
        match event::decode(chunk) {
            Ok(ev) => {
                let again = event::decode(&event::encode(&ev).to_bytes()).expect("re-encoded");
                assert_eq!(again.detail, ev.detail);
                let note = tracker.observe(&ev);
                let _ = format::text_line(&ev, &note, clock, &reasons);
                let _ = format::json_line(&ev, &note, clock, &reasons);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
