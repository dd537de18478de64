//! tcptrace: a tracer of the kernel's TCP state machine.
//!
//! The kernel side (crate `tcptrace_ebpf`) writes one record per TCP state
//! change, SYN-ACK retransmit, retransmit and reset to a ring buffer. Here the
//! data flows one way: [`loader`] and [`reader`] touch the kernel, [`event`]
//! decodes records into typed events once, [`track`] follows live sockets
//! (time in state, owner, origin), and the commands render what they learn.

pub mod aggregate;
pub mod census;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod event;
pub mod events;
pub mod filter;
pub mod findings;
pub mod flight;
pub mod format;
pub mod loader;
pub mod mapping;
pub mod metrics;
pub mod privileges;
pub mod reader;
pub mod reasons;
pub mod record;
pub mod recorder;
pub mod report;
pub mod ringbuf;
pub mod session;
pub mod signals;
pub mod snapshot;
pub mod sockets;
pub mod stage;
pub mod tcp;
pub mod track;
pub mod view;
pub mod watch;
