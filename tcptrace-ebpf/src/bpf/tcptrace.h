/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * The kernel/user ABI of tcptrace: the one record the BPF programs write to the
 * ring buffer. Shared by the BPF side and by build.rs, which derives the Rust
 * mirror's expected layout from this file (see tcptrace-ebpf/src/lib.rs): change
 * a field here and the Rust test `layout_matches_c_header` fails until the mirror
 * follows.
 *
 * Fixed-width fields only, explicit padding, no unions: every event kind uses
 * the same 112-byte record so that the reader never needs a second length.
 *
 * Records reach the ring buffers in batches (struct tcptrace_batch), staged
 * per CPU first (struct tcptrace_stage), which userspace also reads in place.
 */
#ifndef TCPTRACE_H
#define TCPTRACE_H

/* What happened; one value per kernel hook. */
enum tcptrace_kind {
	TCPTRACE_STATE = 1,          /* sock:inet_sock_set_state */
	TCPTRACE_SYNACK_RETRANS = 2, /* tcp:tcp_retransmit_synack */
	TCPTRACE_RETRANS = 3,        /* tcp:tcp_retransmit_skb */
	TCPTRACE_SEND_RESET = 4,     /* tcp:tcp_send_reset */
	TCPTRACE_RECV_RESET = 5,     /* tcp:tcp_receive_reset */
};

/* Bits of tcptrace_event.flags. */
enum tcptrace_flags {
	/* pid, comm and cgroup_id were captured in process context. */
	TCPTRACE_F_TASK = 1 << 0,
	/* reason holds an enum sk_rst_reason value (kernel >= 6.10). */
	TCPTRACE_F_REASON = 1 << 1,
	/* tcp_send_reset fired with no socket: the tuple comes from the packet. */
	TCPTRACE_F_NO_SOCKET = 1 << 2,
	/* sock_id is the socket's kernel address (classic tracepoints), which the
	 * kernel reuses at once: userspace treats each new life as a new socket. */
	TCPTRACE_F_ADDR_ID = 1 << 3,
	/* Written by catch_inet_sock_set_state for an event the kernel skipped
	 * the main program for; rarely a repeat of one it did not skip, which
	 * userspace drops (see state.bpf.c). */
	TCPTRACE_F_CAUGHT = 1 << 4,
};

struct tcptrace_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 sock_id;        /* socket cookie, or kernel address (TCPTRACE_F_ADDR_ID) */
	__u64 cgroup_id;      /* TCPTRACE_F_TASK only */
	__u64 synack_age_us;  /* SYNACK_RETRANS: microseconds since the first SYN-ACK */
	__u8 saddr[16];       /* local address; IPv4 in the first 4 bytes */
	__u8 daddr[16];       /* remote address; IPv4 in the first 4 bytes */
	__u32 netns;          /* network namespace inode (net->ns.inum) */
	__u32 pid;            /* TCPTRACE_F_TASK only: thread-group id */
	__u32 reason;         /* SEND_RESET with TCPTRACE_F_REASON: enum sk_rst_reason */
	__u32 retrans;        /* SYNACK_RETRANS: this SYN-ACK's retransmit number (1..);
			       * RETRANS and STATE->ESTABLISHED: tcp_sock.total_retrans */
	__u32 srtt_us;        /* STATE->ESTABLISHED: first smoothed RTT, microseconds */
	__u16 sport;          /* local port, host order */
	__u16 dport;          /* remote port, host order */
	__u16 family;         /* AF_INET or AF_INET6 */
	__u8 kind;            /* enum tcptrace_kind */
	__u8 oldstate;        /* STATE: old state; RESET kinds: state at the hook */
	__u8 newstate;        /* STATE: new state */
	__u8 flags;           /* enum tcptrace_flags */
	__u8 ring;            /* the ring it was written to (BPF side bookkeeping) */
	__u8 pad;
	char comm[16];        /* TCPTRACE_F_TASK only */
};

#define TCPTRACE_EVENT_SIZE 112

/*
 * Records staged per CPU before they go to the ring as one batch. Each ring
 * record costs a reservation and a commit, two locked instructions that
 * wait for the record's cache lines (kernel/bpf/ringbuf.c:
 * __bpf_ringbuf_reserve, bpf_ringbuf_commit): ~120 ns per record on the
 * benchmark VM. Batched, they are paid once per this many records.
 */
#define TCPTRACE_BATCH_MAX 32

/* Every ring record: this header, then `count` records. */
struct tcptrace_batch {
	__u64 gen;   /* the generation of the stage the records were staged in */
	__u32 cpu;   /* the CPU whose stage that was */
	__u16 count; /* records that follow, 1..TCPTRACE_BATCH_MAX */
	__u16 pad;
};

/*
 * One CPU's stage: a value of the mmapable array `stage`, one per CPU.
 *
 * A writer takes the stage when `depth` is 0 and appends rec[n]; the one
 * that fills it sends rec[0..n) to the CPU's ring as one batch, then sets n
 * back to 0, then adds one to batch.gen. A writer that interrupted another
 * one (a softirq's program interrupting a process-context one; nesting is
 * last-in first-out) uses `nested` and sends it alone to the nested ring.
 *
 * Userspace takes staged records in place, so that a CPU that goes quiet
 * holds none back: it reads batch.gen, then n, copies rec[..n), and keeps
 * the copy only if batch.gen did not change meanwhile (a seqcount); the
 * batch of that generation arrives later with its first records already
 * taken, and userspace skips them.
 */
struct tcptrace_stage {
	__u32 depth;                      /* writers inside on this CPU */
	__u32 n;                          /* records staged and complete */
	__u8 pad0[56];                    /* the rest of the first cache line */
	struct tcptrace_batch nested_batch;
	struct tcptrace_event nested;     /* directly after nested_batch */
	struct tcptrace_batch batch;
	struct tcptrace_event rec[TCPTRACE_BATCH_MAX]; /* directly after batch */
	__u8 pad1[304];                   /* whole cache lines per CPU */
};

#define TCPTRACE_STAGE_SIZE 4096

#ifndef __cplusplus
_Static_assert(sizeof(struct tcptrace_event) == TCPTRACE_EVENT_SIZE,
	       "tcptrace_event size is part of the ABI");
_Static_assert(sizeof(struct tcptrace_batch) == 16, "tcptrace_batch size is part of the ABI");
_Static_assert(sizeof(struct tcptrace_stage) == TCPTRACE_STAGE_SIZE,
	       "tcptrace_stage size is part of the ABI");
_Static_assert(__builtin_offsetof(struct tcptrace_stage, rec) ==
		       __builtin_offsetof(struct tcptrace_stage, batch) + sizeof(struct tcptrace_batch),
	       "a batch is sent as one copy: header, then records");
_Static_assert(__builtin_offsetof(struct tcptrace_stage, nested) ==
		       __builtin_offsetof(struct tcptrace_stage, nested_batch) +
			       sizeof(struct tcptrace_batch),
	       "a nested record is sent as one copy: header, then record");
#endif

#endif /* TCPTRACE_H */
