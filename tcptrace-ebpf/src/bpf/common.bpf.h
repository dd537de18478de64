/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Shared by every tcptrace program: the ring buffers, the per-CPU stages that
 * batch records for them, the lost-event counter, the load-time settings, and
 * the helpers that fill a tcptrace_event from a socket or a packet. Every
 * kernel read is relocated by CO-RE, so one object runs on any kernel with
 * BTF; each helper reads the way its caller may (see KREAD).
 *
 * The maps and settings are defined in exactly one translation unit (the one
 * that defines TCPTRACE_DEFINE_MAPS) and declared extern in the others; bpftool's
 * static linker resolves them into one object.
 */
#ifndef TCPTRACE_COMMON_BPF_H
#define TCPTRACE_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"

/*
 * Reads a kernel field, `expr` being a member access such as `skc->skc_num`.
 * tp_btf programs hold typed pointers that the verifier lets them dereference:
 * a plain load, which the JIT emits as one instruction with an exception-table
 * entry (kernel/bpf/verifier.c: BPF_PROBE_MEM). Classic tracepoints hand over
 * untyped addresses, which must go through bpf_probe_read_kernel(), a helper
 * call per field: about a dozen per state event, the largest avoidable cost
 * after the ring buffer. `direct` is a constant at every call site, so after
 * inlining each program keeps only its own kind of read.
 */
#define KREAD(direct, expr)                                  \
	((direct) ? (expr) : ({                              \
		__typeof_unqual__(expr) v_ = 0;              \
		bpf_core_read(&v_, sizeof(v_), &(expr));     \
		v_;                                          \
	}))

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#ifdef TCPTRACE_DEFINE_MAPS
#define TCPTRACE_EXTERN
#else
#define TCPTRACE_EXTERN extern
#endif

/*
 * Up to TCPTRACE_MAX_RINGS ring buffers; CPU c writes to ring c % nr_rings.
 * One ring keeps global order and suits small hosts; on many-core hosts
 * several rings spare the CPUs contention on one ring's reserve lock, and the
 * reader merges them by timestamp. Userspace sizes the used rings and shrinks
 * the others to one page before load. Separate maps rather than an array of
 * ring buffers: a map-in-map costs a lookup per event.
 */
#define TCPTRACE_MAX_RINGS 4
#define TCPTRACE_RING(name)                          \
	TCPTRACE_EXTERN struct {                     \
		__uint(type, BPF_MAP_TYPE_RINGBUF);  \
		__uint(max_entries, 4 << 20);        \
	} name SEC(".maps")
TCPTRACE_RING(events);
TCPTRACE_RING(events1);
TCPTRACE_RING(events2);
TCPTRACE_RING(events3);

/* Rings in use, 1..TCPTRACE_MAX_RINGS. Set before load. */
TCPTRACE_EXTERN const volatile __u32 nr_rings;

/*
 * A counter with one slot per CPU so that CPUs never contend for it
 * (userspace sets max_entries to the possible-CPU count before load). Not a
 * per-CPU map: this array is mmapable, so a daemon that dropped its
 * capabilities can still read it (with kernel.unprivileged_bpf_disabled set,
 * an unprivileged process cannot even look up a map it already holds).
 */
#define TCPTRACE_CPU_COUNTER(name)                   \
	TCPTRACE_EXTERN struct {                     \
		__uint(type, BPF_MAP_TYPE_ARRAY);    \
		__uint(max_entries, 1);              \
		__uint(map_flags, BPF_F_MMAPABLE);   \
		__type(key, __u32);                  \
		__type(value, __u64);                \
	} name SEC(".maps")

/* Failed ring reservations. */
TCPTRACE_CPU_COUNTER(lost);
/*
 * Events the catcher program handled (see state.bpf.c): userspace counts
 * skipped runs, minus these, plus the repeats among them it dropped, as lost.
 */
TCPTRACE_CPU_COUNTER(caught);

/* Adds one to this CPU's slot of `lost` or `caught`. Atomic although the slot
 * is this CPU's: a softirq program may interrupt a process-context one on the
 * same CPU. */
static __always_inline void cpu_count(void *counter)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u64 *n = bpf_map_lookup_elem(counter, &cpu);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/*
 * Batches are sent without waking the reader (a wake-up costs ~2.5 us on a
 * VM, more than everything else together); the reader drains on a short
 * timer. Once this many bytes wait unread, a send wakes it anyway, so a burst
 * cannot fill the ring between two timer ticks. Set before load.
 */
TCPTRACE_EXTERN const volatile __u64 wakeup_bytes;

/*
 * In-kernel filters, set before load; 0 means "any". Filtering here, before a
 * record is begun, costs a few reads per event when a filter is set and
 * nothing otherwise, keeps the ring for the events that are wanted, and makes
 * the lost count about those events only.
 */
#define TCPTRACE_MAX_FILTER_PORTS 16
TCPTRACE_EXTERN const volatile __u32 filter_netns;
TCPTRACE_EXTERN const volatile __u32 filter_nports;
TCPTRACE_EXTERN const volatile __u16 filter_ports[TCPTRACE_MAX_FILTER_PORTS];

static __always_inline bool port_listed(__u16 port)
{
	for (int i = 0; i < TCPTRACE_MAX_FILTER_PORTS; i++) {
		if (i >= filter_nports)
			break;
		if (port && filter_ports[i] == port)
			return true;
	}
	return false;
}

/*
 * What each CPU remembers between events: the last network namespace it saw
 * (net_inum), when it last checked and woke its ring's reader (wakeup_due),
 * and the state event the main state program last began (for its catcher,
 * see state.bpf.c). Programs of different contexts may interleave on one CPU
 * (a softirq one interrupting a process-context one), so every use tolerates
 * that.
 */
struct cpu_memo {
	__u64 net_cookie;
	__u32 net_inum;
	__u32 net_seq;      /* odd while net_cookie and net_inum are written */
	__u64 woken_cons;   /* 1 + the ring's consumer position at this CPU's last wake-up */
	__u64 begun_sk;     /* the socket of the state event last begun */
	__u32 begun_states; /* and its oldstate << 8 | newstate */
	__u32 catcher_wake; /* 1 + the ring whose reader the catcher is to wake; 0 for none */
	__u32 submits;      /* batches sent from this CPU, for sampling */
	__u32 pad;
};

TCPTRACE_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_memo);
} cpu_memo SEC(".maps");

static __always_inline struct cpu_memo *this_cpu_memo(void)
{
	__u32 zero = 0;

	/* Inlined by the verifier for per-CPU arrays (kernel >= 6.10). */
	return bpf_map_lookup_elem(&cpu_memo, &zero);
}

/* net_cookie as a plain u64 (kernel >= 5.14, set in setup_net); before, it
 * was an atomic64_t assigned on first use, and could still be 0. */
struct net___cookie_u64 {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

/*
 * The namespace's inode number, as `ls -l /proc/PID/ns/net` shows it.
 *
 * ns.inum shares a cache line with the namespace's reference count
 * (include/linux/ns_common.h: inum, __ns_ref), which every socket's creation
 * and release changes (net/core/sock.c: sk_alloc and __sk_destruct take and
 * drop a reference). Under churn, reading it missed on a line the other CPU
 * keeps writing: a fifth of the state program's own samples in perf. The
 * namespace's cookie, unique for the boot, sits on a line written once, so
 * each CPU keeps the last cookie and inum it read, and reads inum only when
 * the cookie changes.
 *
 * A program may interrupt another on the same CPU, but only ever runs to its
 * end before the interrupted one resumes. So a sequence count suffices, as in
 * the kernel's seqcount: a reader trusts the pair only if the count was even
 * and unchanged around its reads (any write in between adds 2 or more), and a
 * writer that finds it odd has interrupted another writer and leaves the memo
 * to it.
 */
static __always_inline __u32 net_inum(const struct net *net, bool direct)
{
	const struct net___cookie_u64 *n = (const void *)net;
	struct cpu_memo *m;
	__u64 cookie;
	__u32 inum, seq;

	if (!bpf_core_field_exists(n->net_cookie) || !(m = this_cpu_memo()))
		return KREAD(direct, net->ns.inum);
	cookie = KREAD(direct, n->net_cookie);
	seq = m->net_seq;
	barrier();
	if (cookie && !(seq & 1) && m->net_cookie == cookie) {
		inum = m->net_inum;
		barrier();
		if (m->net_seq == seq)
			return inum;
	}
	inum = KREAD(direct, net->ns.inum);
	if (!cookie || (m->net_seq & 1))
		return inum;
	m->net_seq++;
	barrier();
	m->net_cookie = cookie;
	m->net_inum = inum;
	barrier();
	m->net_seq++;
	return inum;
}

static __always_inline __u32 skc_netns(const struct sock_common *skc, bool direct)
{
	return net_inum(KREAD(direct, skc->skc_net.net), direct);
}

/*
 * Whether a socket's events are wanted. The local port is read both from
 * skc_num and, for full sockets (`inet` not NULL), inet_sport: skc_num is 0 at
 * the final CLOSE.
 */
static __always_inline bool sock_wanted(const struct sock_common *skc,
					const struct inet_sock *inet, bool direct)
{
	if (filter_netns && skc_netns(skc, direct) != filter_netns)
		return false;
	if (!filter_nports)
		return true;
	if (port_listed(KREAD(direct, skc->skc_num)) ||
	    port_listed(bpf_ntohs(KREAD(direct, skc->skc_dport))))
		return true;
	return inet && port_listed(bpf_ntohs(KREAD(direct, inet->inet_sport)));
}

/* Each ring is a distinct map the verifier must see as a constant. */
#define TCPTRACE_ON_RING(ring, call, ...)                 \
	({                                                \
		__typeof__(call(&events, ##__VA_ARGS__)) r_;  \
		switch (ring) {                           \
		case 1: r_ = call(&events1, ##__VA_ARGS__); break; \
		case 2: r_ = call(&events2, ##__VA_ARGS__); break; \
		case 3: r_ = call(&events3, ##__VA_ARGS__); break; \
		default: r_ = call(&events, ##__VA_ARGS__); break; \
		}                                         \
		r_;                                       \
	})

/*
 * The ring this CPU writes to: CPU c % nr_rings. nr_rings is a constant the
 * verifier knows, so only one of these paths is left; the division, tens of
 * cycles, only for a ring count that is not a power of two.
 */
static __always_inline __u32 this_ring(void)
{
	if (nr_rings <= 1)
		return 0;
	if (!(nr_rings & (nr_rings - 1)))
		return bpf_get_smp_processor_id() & (nr_rings - 1);
	return bpf_get_smp_processor_id() % nr_rings;
}

/*
 * One batch in this many per CPU checks the ring's fill level. The check is a
 * helper call that reads the reader's consumer position, a line the reader
 * writes, so it need not run for every batch. Sampling lets the unread data
 * pass wakeup_bytes by at most this many batches per CPU sharing the ring
 * before a wake-up, ~14 KiB against a quarter of the ring.
 */
#define TCPTRACE_WAKEUP_SAMPLE 8

/*
 * Whether the reader of `ring` should be woken now: once wakeup_bytes are
 * unread, and once per CPU until the reader reads again. Each wake-up is an
 * irq_work and a self-IPI, and a reader kept from the CPU by the very load
 * being traced would otherwise take one per check until it runs. The timer
 * drains the ring anyway; a wake-up only brings the drain forward.
 */
static __always_inline bool wakeup_due(__u32 ring)
{
	struct cpu_memo *m = this_cpu_memo();
	__u64 cons;

	if (!m || ++m->submits % TCPTRACE_WAKEUP_SAMPLE)
		return false;
	if (TCPTRACE_ON_RING(ring, bpf_ringbuf_query, BPF_RB_AVAIL_DATA) < wakeup_bytes)
		return false;
	/* + 1: 0 stands for "never woken", and the first position is 0. */
	cons = TCPTRACE_ON_RING(ring, bpf_ringbuf_query, BPF_RB_CONS_POS) + 1;
	if (cons == m->woken_cons)
		return false;
	m->woken_cons = cons;
	return true;
}

/*
 * Wakes the reader of `ring` apart from any record: a discarded 8-byte
 * reservation (which the reader skips) committed with a forced wake-up.
 */
static __always_inline void ring_wake(__u32 ring)
{
	void *r = TCPTRACE_ON_RING(ring, bpf_ringbuf_reserve, 8, 0);

	if (r)
		bpf_ringbuf_discard(r, BPF_RB_FORCE_WAKEUP);
}

/*
 * The per-CPU stages (tcptrace.h: struct tcptrace_stage): userspace sets
 * max_entries to the possible-CPU count before load, and maps the array to
 * take staged records in place.
 */
TCPTRACE_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tcptrace_stage);
} stage SEC(".maps");

/* Where nested writers send their record (see struct tcptrace_stage). */
TCPTRACE_RING(events_nested);

static __always_inline struct tcptrace_stage *this_stage(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	/* An array lookup, inlined by the verifier. */
	return bpf_map_lookup_elem(&stage, &cpu);
}

/*
 * Sends the full stage to this CPU's ring as one batch, and starts the next
 * generation. Returns the ring whose reader is due a wake-up, -1 for none,
 * or -2 when the ring had no room: the stage then stays full, its records
 * neither sent nor lost, and the next writer tries again (userspace takes
 * them from the stage meanwhile).
 *
 * The order of the stores is what userspace's seqcount read relies on (it
 * reads gen, then n, then the records, then gen again): the batch is
 * committed first, then n goes back to 0, then gen moves, and only then are
 * records written again. A reader that sees the new gen sees n from after
 * the reset; one that sees the old gen with a newer n sees gen moved when
 * it looks again, and drops its copy. (With gen moved first, a reader could
 * see the new gen beside the old n, and take the old records as the new
 * generation's.) The BPF
 * program's stores are plain; x86 keeps stores in program order (this
 * object is built for x86; barrier() keeps the compiler from reordering
 * them).
 */
static __always_inline int stage_flush(struct tcptrace_stage *st)
{
	__u32 ring = this_ring();

	st->batch.cpu = bpf_get_smp_processor_id();
	st->batch.count = TCPTRACE_BATCH_MAX;
	if (TCPTRACE_ON_RING(ring, bpf_ringbuf_output, &st->batch,
			     sizeof(st->batch) + sizeof(st->rec), BPF_RB_NO_WAKEUP))
		return -2;
	barrier();
	st->n = 0;
	barrier();
	st->batch.gen++;
	return wakeup_due(ring) ? ring : -1;
}

/*
 * A zeroed record to fill in this CPU's stage, or NULL (counted as lost).
 * Every record begun is ended with event_end, on every path.
 */
static __always_inline struct tcptrace_event *event_begin(__u8 kind)
{
	struct tcptrace_stage *st = this_stage();
	struct tcptrace_event *e;
	__u32 depth, n;

	if (!st) {
		cpu_count(&lost);
		return NULL;
	}
	depth = st->depth;
	st->depth = depth + 1;
	barrier();
	if (depth == 0) {
		n = st->n;
		if (n >= TCPTRACE_BATCH_MAX) {
			if (stage_flush(st) == -2)
				goto lost;
			n = 0;
		}
		e = &st->rec[n & (TCPTRACE_BATCH_MAX - 1)];
	} else if (depth == 1) {
		e = &st->nested;
	} else {
		/* No hook of ours runs in hard interrupt context: never seen. */
		goto lost;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->ring = this_ring();
	e->ts_ns = bpf_ktime_get_ns();
	return e;
lost:
	barrier();
	st->depth = depth;
	cpu_count(&lost);
	return NULL;
}

/*
 * Ends the record event_begin gave: stages it, sending the batch when the
 * stage is full, or sends a nested writer's record alone. Returns the ring
 * whose reader is due a wake-up, or -1.
 */
static __always_inline int event_end(void)
{
	struct tcptrace_stage *st = this_stage();
	int wake = -1;
	__u32 depth, n;

	if (!st)
		return -1;
	depth = st->depth;
	barrier();
	if (depth == 1) {
		/* The record's stores come before n's (see stage_flush). */
		n = st->n + 1;
		st->n = n;
		if (n >= TCPTRACE_BATCH_MAX) {
			wake = stage_flush(st);
			if (wake == -2)
				wake = -1;
		}
	} else {
		st->nested_batch.cpu = bpf_get_smp_processor_id();
		st->nested_batch.count = 1;
		if (bpf_ringbuf_output(&events_nested, &st->nested_batch,
				       sizeof(st->nested_batch) + sizeof(st->nested),
				       BPF_RB_NO_WAKEUP))
			cpu_count(&lost);
	}
	barrier();
	st->depth = depth - 1;
	return wake;
}

/* Ends a record and wakes the reader at once if it is due. */
static __always_inline void event_end_and_wake(void)
{
	int wake = event_end();

	if (wake >= 0)
		ring_wake(wake);
}

/*
 * The socket cookie, for tp_btf programs. bpf_get_socket_cookie() generates
 * it on a socket's first use (net/core/sock_diag.c: __sock_gen_cookie) and
 * stores it in skc_cookie; after that a plain load reads it, sparing every
 * later event of the socket a helper call.
 */
static __always_inline __u64 sock_cookie(struct sock *sk)
{
	__u64 cookie = sk->__sk_common.skc_cookie.counter;

	return cookie ? cookie : bpf_get_socket_cookie(sk);
}

/* The current task; meaningful only in process context (connect, listen). */
static __always_inline void event_fill_task(struct tcptrace_event *e)
{
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->flags |= TCPTRACE_F_TASK;
}

/*
 * Family, addresses, ports and netns from the socket's common part, which full,
 * request and timewait sockets share (include/net/sock.h: struct sock_common).
 * The local port comes from skc_num. When that is 0, full sockets (`inet` not
 * NULL) still have it in inet_sport, which survives the unhash at CLOSE while
 * skc_num does not (net/ipv4/inet_hashtables.c: __inet_put_port clears
 * inet_num); both are 0 at CLOSE->SYN_SENT, before connect() picks a port.
 * inet_sport is read only then: it lies on a line of its own that most events
 * would otherwise fetch for nothing.
 */
static __always_inline void event_fill_sock_common(struct tcptrace_event *e,
						    const struct sock_common *skc,
						    const struct inet_sock *inet, bool direct)
{
	__u16 sport = KREAD(direct, skc->skc_num);

	if (!sport && inet)
		sport = bpf_ntohs(KREAD(direct, inet->inet_sport));
	e->family = KREAD(direct, skc->skc_family);
	e->sport = sport;
	e->dport = bpf_ntohs(KREAD(direct, skc->skc_dport));
	e->netns = skc_netns(skc, direct);
	if (e->family == AF_INET) {
		*(__u32 *)e->saddr = KREAD(direct, skc->skc_rcv_saddr);
		*(__u32 *)e->daddr = KREAD(direct, skc->skc_daddr);
	} else {
		for (int i = 0; i < 4; i++) {
			((__u32 *)e->saddr)[i] = KREAD(direct, skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i]);
			((__u32 *)e->daddr)[i] = KREAD(direct, skc->skc_v6_daddr.in6_u.u6_addr32[i]);
		}
	}
}

/*
 * The tuple of the packet a reset answers, reversed so that "local" is this
 * host: the packet's destination is our address and port. Used when
 * tcp_send_reset has a packet (net/ipv4/tcp_ipv4.c: tcp_v4_send_reset).
 */
static __always_inline void event_fill_from_skb(struct tcptrace_event *e,
						const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	struct tcphdr tcp;
	__u8 version;

	if (bpf_probe_read_kernel(&version, 1, head + nh))
		return;
	version >>= 4;
	if (version == 4) {
		struct iphdr *ip = (struct iphdr *)(head + nh);

		e->family = AF_INET;
		bpf_probe_read_kernel(e->saddr, 4, &ip->daddr);
		bpf_probe_read_kernel(e->daddr, 4, &ip->saddr);
	} else if (version == 6) {
		struct ipv6hdr *ip6 = (struct ipv6hdr *)(head + nh);

		e->family = AF_INET6;
		bpf_probe_read_kernel(e->saddr, 16, &ip6->daddr);
		bpf_probe_read_kernel(e->daddr, 16, &ip6->saddr);
	}
	if (!bpf_probe_read_kernel(&tcp, sizeof(tcp), head + th)) {
		e->sport = bpf_ntohs(tcp.dest);
		e->dport = bpf_ntohs(tcp.source);
	}
}

static __always_inline bool family_is_inet(__u16 family)
{
	return family == AF_INET || family == AF_INET6;
}

#endif /* TCPTRACE_COMMON_BPF_H */
