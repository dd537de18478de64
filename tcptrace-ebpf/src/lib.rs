//! tcptrace's kernel side as seen from Rust: the compiled BPF object (built from
//! `src/bpf/*.bpf.c` by `build.rs`) and the Rust mirror of the one record its
//! programs write to the ring buffer (`src/bpf/tcptrace.h`).
//!
//! The mirror is checked field by field against the layout the C compiler gives
//! the header (`layout_matches_c_header`), and the ABI constants are generated
//! from the header, so the two sides cannot drift apart unnoticed.

#[allow(dead_code, reason = "C_EVENT_FIELDS is read by the layout test only")]
mod abi {
    include!(concat!(env!("OUT_DIR"), "/abi_layout.rs"));
}

pub use abi::{
    TCPTRACE_F_ADDR_ID as F_ADDR_ID, TCPTRACE_F_CAUGHT as F_CAUGHT,
    TCPTRACE_F_NO_SOCKET as F_NO_SOCKET, TCPTRACE_F_REASON as F_REASON, TCPTRACE_F_TASK as F_TASK,
    TCPTRACE_RECV_RESET as KIND_RECV_RESET, TCPTRACE_RETRANS as KIND_RETRANS,
    TCPTRACE_SEND_RESET as KIND_SEND_RESET, TCPTRACE_STATE as KIND_STATE,
    TCPTRACE_SYNACK_RETRANS as KIND_SYNACK_RETRANS,
};

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT_ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/tcptrace.bpf.o")));

/// The linked BPF object (ELF), 8-byte aligned as the ELF parser wants it.
pub static OBJECT: &[u8] = &OBJECT_ALIGNED.0;

/// Names of the maps and load-time settings in [`OBJECT`].
pub mod names {
    /// The ring buffers (`BPF_MAP_TYPE_RINGBUF`), in ring order.
    pub const RING_MAPS: [&str; 4] = ["events", "events1", "events2", "events3"];
    /// `const volatile __u32`: only this network namespace (inode); 0 = any.
    pub const FILTER_NETNS: &str = "filter_netns";
    /// `const volatile __u32`: how many of `filter_ports` are set; 0 = any port.
    pub const FILTER_NPORTS: &str = "filter_nports";
    /// `const volatile __u16[16]`: ports either side of a socket must match.
    pub const FILTER_PORTS: &str = "filter_ports";
    /// `const volatile __u32`: rings in use.
    pub const NR_RINGS: &str = "nr_rings";
    /// Failed ring reservations: a mmapable array with one `u64` slot per CPU.
    pub const LOST_MAP: &str = "lost";
    /// Skipped runs of the state program that its catcher handled: the same
    /// shape as [`LOST_MAP`].
    pub const CAUGHT_MAP: &str = "caught";
    /// The program that handles state events the main one was skipped for.
    pub const STATE_CATCHER: &str = "catch_inet_sock_set_state";
    /// `const volatile __u64`: bytes waiting in the ring that force a wake-up.
    pub const WAKEUP_BYTES: &str = "wakeup_bytes";
    pub const STAGE_MAP: &str = "stage";
    pub const NESTED_RING: &str = "events_nested";
}

/// Mirror of `struct tcptrace_event` in `src/bpf/tcptrace.h`; see there for
/// what each field means per event kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    pub ts_ns: u64,
    pub sock_id: u64,
    pub cgroup_id: u64,
    pub synack_age_us: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    pub pid: u32,
    pub reason: u32,
    pub retrans: u32,
    pub srtt_us: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub flags: u8,
    pub ring: u8,
    pub pad: u8,
    pub comm: [u8; 16],
}

/// Size of one ring-buffer record.
pub const EVENT_SIZE: usize = abi::C_EVENT_SIZE;

/// The layout of a CPU's stage and of a batch (tcptrace.h: `struct
/// tcptrace_stage`, `struct tcptrace_batch`), generated from the header.
pub mod batch {
    pub use super::abi::{
        C_BATCH_COUNT as COUNT, C_BATCH_CPU as CPU, C_BATCH_GEN as GEN, C_BATCH_MAX as MAX,
        C_BATCH_SIZE as HEADER, C_STAGE_GEN as STAGE_GEN, C_STAGE_N as STAGE_N,
        C_STAGE_REC as STAGE_REC, C_STAGE_SIZE as STAGE_SIZE,
    };
}

impl RawEvent {
    /// Reads a record from ring-buffer bytes; `None` if there are too few.
    ///
    /// This is the only place that reinterprets kernel bytes: a length check,
    /// then an unaligned read of a plain-old-data struct.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked above; `RawEvent` is `repr(C)` made of
        // integers and byte arrays only, so every bit pattern is a valid value,
        // and `read_unaligned` has no alignment requirement.
        Some(unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() })
    }

    /// The record's bytes, as the kernel would write them (for tests and
    /// recordings).
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        // SAFETY: `RawEvent` is `repr(C)`, has no padding the compiler adds
        // (the layout test checks every field is where the C header puts it and
        // that the sizes match), and is exactly EVENT_SIZE bytes.
        unsafe { std::mem::transmute_copy::<Self, [u8; EVENT_SIZE]>(self) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn layout_matches_c_header() {
        let rust: &[(&str, usize, usize)] = &[
            ("ts_ns", offset_of!(RawEvent, ts_ns), 8),
            ("sock_id", offset_of!(RawEvent, sock_id), 8),
            ("cgroup_id", offset_of!(RawEvent, cgroup_id), 8),
            ("synack_age_us", offset_of!(RawEvent, synack_age_us), 8),
            ("saddr", offset_of!(RawEvent, saddr), 16),
            ("daddr", offset_of!(RawEvent, daddr), 16),
            ("netns", offset_of!(RawEvent, netns), 4),
            ("pid", offset_of!(RawEvent, pid), 4),
            ("reason", offset_of!(RawEvent, reason), 4),
            ("retrans", offset_of!(RawEvent, retrans), 4),
            ("srtt_us", offset_of!(RawEvent, srtt_us), 4),
            ("sport", offset_of!(RawEvent, sport), 2),
            ("dport", offset_of!(RawEvent, dport), 2),
            ("family", offset_of!(RawEvent, family), 2),
            ("kind", offset_of!(RawEvent, kind), 1),
            ("oldstate", offset_of!(RawEvent, oldstate), 1),
            ("newstate", offset_of!(RawEvent, newstate), 1),
            ("flags", offset_of!(RawEvent, flags), 1),
            ("ring", offset_of!(RawEvent, ring), 1),
            ("pad", offset_of!(RawEvent, pad), 1),
            ("comm", offset_of!(RawEvent, comm), 16),
        ];
        assert_eq!(rust, abi::C_EVENT_FIELDS);
        assert_eq!(size_of::<RawEvent>(), abi::C_EVENT_SIZE);
    }

    #[test]
    fn bytes_round_trip() {
        let ev = RawEvent {
            ts_ns: 1,
            sock_id: 0x0102_0304_0506_0708,
            sport: 8080,
            kind: KIND_STATE,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..RawEvent::default()
        };
        assert_eq!(RawEvent::from_bytes(&ev.to_bytes()), Some(ev));
        assert_eq!(RawEvent::from_bytes(&ev.to_bytes()[..EVENT_SIZE - 1]), None);
    }

    #[test]
    fn object_is_an_elf_with_the_maps() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        let has = |needle: &str| OBJECT.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(has(names::RING_MAPS[3]) && has(names::LOST_MAP) && has(names::WAKEUP_BYTES));
    }
}
