/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Shared by every tcptrace program: the ring buffer, the lost-event counter, the
 * load-time settings, and the helpers that fill a tcptrace_event from a socket
 * or a packet. Every kernel read goes through CO-RE (BPF_CORE_READ), so one
 * object runs on any kernel with BTF; it works from tp_btf and classic
 * tracepoint programs alike.
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

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#ifdef TCPTRACE_DEFINE_MAPS
#define TCPTRACE_EXTERN
#else
#define TCPTRACE_EXTERN extern
#endif

/* One ring for all CPUs; userspace sizes it (set_max_entries) before load. */
TCPTRACE_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/*
 * Failed ring reservations, one slot per CPU so that CPUs never contend for a
 * counter (userspace sets max_entries to the possible-CPU count before load).
 * Not a per-CPU map: this array is mmapable, so a daemon that dropped its
 * capabilities can still read it (with kernel.unprivileged_bpf_disabled set,
 * an unprivileged process cannot even look up a map it already holds).
 */
TCPTRACE_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/*
 * Records are submitted without waking the reader (a wake-up costs ~2.5 us per
 * event on a VM, more than everything else together); the reader drains on a
 * short timer. Once this many bytes wait unread, the submit wakes it anyway, so
 * a burst cannot fill the ring between two timer ticks. Set before load.
 */
TCPTRACE_EXTERN const volatile __u64 wakeup_bytes;

/* Reserve a zeroed record, or count the loss. */
static __always_inline struct tcptrace_event *event_reserve(__u8 kind)
{
	struct tcptrace_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__u32 cpu = bpf_get_smp_processor_id();
		__u64 *n = bpf_map_lookup_elem(&lost, &cpu);

		/* Atomic although the slot is this CPU's: a softirq program may
		 * interrupt a process-context one on the same CPU. */
		if (n)
			__sync_fetch_and_add(n, 1);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->ts_ns = bpf_ktime_get_ns();
	return e;
}

static __always_inline void event_submit(struct tcptrace_event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* The current task; meaningful only in process context (connect, listen). */
static __always_inline void event_fill_task(struct tcptrace_event *e)
{
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->flags |= TCPTRACE_F_TASK;
}

static __always_inline __u32 net_inum(const struct net *net)
{
	return BPF_CORE_READ(net, ns.inum);
}

/*
 * Family, addresses, ports and netns from the socket's common part, which full,
 * request and timewait sockets share (include/net/sock.h: struct sock_common).
 * The local port comes from skc_num; callers that run after the port was
 * released override it (see fill_sport_from_inet).
 */
static __always_inline void event_fill_sock_common(struct tcptrace_event *e,
						    const struct sock_common *skc)
{
	e->family = BPF_CORE_READ(skc, skc_family);
	e->sport = BPF_CORE_READ(skc, skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	e->netns = net_inum(BPF_CORE_READ(skc, skc_net.net));
	if (e->family == AF_INET) {
		bpf_core_read(e->saddr, 4, &skc->skc_rcv_saddr);
		bpf_core_read(e->daddr, 4, &skc->skc_daddr);
	} else {
		bpf_core_read(e->saddr, 16, &skc->skc_v6_rcv_saddr);
		bpf_core_read(e->daddr, 16, &skc->skc_v6_daddr);
	}
}

/*
 * inet_sport survives the unhash at CLOSE, while skc_num is already 0 by then
 * (net/ipv4/inet_hashtables.c: __inet_put_port clears inet_num). It is still 0
 * at CLOSE->SYN_SENT, before connect() picks a port.
 */
static __always_inline void fill_sport_from_inet(struct tcptrace_event *e, const struct sock *sk)
{
	__u16 sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));

	if (sport)
		e->sport = sport;
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

/* sk_protocol became a full u16 in 5.6; the probed bitfield read handles both. */
static __always_inline bool sock_is_tcp(const struct sock *sk)
{
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) == IPPROTO_TCP;
}

static __always_inline bool family_is_inet(__u16 family)
{
	return family == AF_INET || family == AF_INET6;
}

#endif /* TCPTRACE_COMMON_BPF_H */
