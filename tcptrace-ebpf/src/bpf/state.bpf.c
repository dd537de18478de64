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

/*
 * `tp` is the socket as a tcp_sock (tcp_sock starts with inet_sock, which
 * starts with sock): tp_btf programs get it typed from bpf_skc_to_tcp_sock(),
 * which the verifier needs before it allows reads past struct sock; classic
 * ones cast the address they are given and read through probes.
 */
static __always_inline void emit_state(const struct tcp_sock *tp, __u64 sock_id, __u8 id_flags,
				       int oldstate, int newstate, bool direct)
{
	const struct inet_sock *inet = &tp->inet_conn.icsk_inet;
	const struct sock_common *skc = &inet->sk.__sk_common;
	struct tcptrace_event *e;

	if (!family_is_inet(KREAD(direct, skc->skc_family)) || !sock_wanted(skc, inet, direct))
		return;
	e = event_reserve(TCPTRACE_STATE);
	if (!e)
		return;
	e->sock_id = sock_id;
	e->flags = id_flags;
	e->oldstate = oldstate;
	e->newstate = newstate;
	event_fill_sock_common(e, skc, inet, direct);
	if (in_process_context(oldstate, newstate))
		event_fill_task(e);
	if (newstate == TCP_ESTABLISHED) {
		/* First RTT sample and retransmits of the handshake: the child's
		 * SYN_RECV dwell is ~20 us whatever the handshake took, because the
		 * child is only created when the final ACK arrives. */
		e->srtt_us = KREAD(direct, tp->srtt_us) >> 3;
		e->retrans = KREAD(direct, tp->total_retrans);
	}
	event_submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	/* NULL for SCTP and MPTCP sockets, for which the tracepoint also fires. */
	const struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (!tp)
		return 0;
	emit_state(tp, sock_cookie(sk), 0, oldstate, newstate, true);
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
	emit_state((const struct tcp_sock *)sk, (__u64)sk, TCPTRACE_F_ADDR_ID, oldstate, newstate,
		   false);
	return 0;
}
