// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * The TCP state machine: every transition of a TCP socket, from
 * sock:inet_sock_set_state (include/trace/events/sock.h, fired by
 * net/ipv4/tcp.c: tcp_set_state and inet_sk_state_store). Time in state is
 * computed in userspace from consecutive records of the same socket, so this
 * program keeps no per-socket map: that map was the largest cost after the
 * ring buffer when prototyped (see DESIGN.md, "Performance budget").
 *
 * This translation unit owns the shared maps and the license.
 */
#define TCPTRACE_DEFINE_MAPS
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/*
 * The owning task is only known in process context: connect() moves
 * CLOSE->SYN_SENT and listen() CLOSE->LISTEN. Every other transition runs in
 * softirq or timer context, where "current" is whoever was interrupted.
 * Accepted sockets inherit the listener's owner in userspace.
 */
static __always_inline bool in_process_context(int oldstate, int newstate)
{
	return oldstate == TCP_CLOSE && (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN);
}

static __always_inline void emit_state(const struct sock *sk, __u64 sock_id, __u8 id_flags,
				       int oldstate, int newstate)
{
	struct tcptrace_event *e;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (!family_is_inet(family) || !sock_wanted(&sk->__sk_common, true))
		return;
	e = event_reserve(TCPTRACE_STATE);
	if (!e)
		return;
	e->sock_id = sock_id;
	e->flags = id_flags;
	e->oldstate = oldstate;
	e->newstate = newstate;
	event_fill_sock_common(e, &sk->__sk_common);
	fill_sport_from_inet(e, sk);
	if (in_process_context(oldstate, newstate))
		event_fill_task(e);
	if (newstate == TCP_ESTABLISHED) {
		/* First RTT sample and retransmits of the handshake: the child's
		 * SYN_RECV dwell is ~20 us whatever the handshake took, because the
		 * child is only created when the final ACK arrives. */
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;

		e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
		e->retrans = BPF_CORE_READ(tp, total_retrans);
	}
	event_submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_inet_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
	/* The tracepoint also fires for SCTP and MPTCP sockets. */
	if (!sock_is_tcp(sk))
		return 0;
	emit_state(sk, bpf_get_socket_cookie((void *)sk), 0, oldstate, newstate);
	return 0;
}

/* Classic tracepoint path for kernels without tp_btf: no socket cookie, so the
 * socket's address is the key (see TCPTRACE_F_ADDR_ID). */
SEC("tracepoint/sock/inet_sock_set_state")
int classic_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	const struct sock *sk = ctx->skaddr;
	__u16 protocol = ctx->protocol;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;

	if (protocol != IPPROTO_TCP)
		return 0;
	emit_state(sk, (__u64)sk, TCPTRACE_F_ADDR_ID, oldstate, newstate);
	return 0;
}
