// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Retransmissions: SYN-ACKs retransmitted by a listener for a pending request
 * (tcp:tcp_retransmit_synack, net/ipv4/tcp_output.c: tcp_rtx_synack) and data
 * segments retransmitted by an established socket (tcp:tcp_retransmit_skb,
 * net/ipv4/tcp_output.c: __tcp_retransmit_skb).
 */
#include "common.bpf.h"

/*
 * The request socket is never traced by inet_sock_set_state (NEW_SYN_RECV), so
 * everything about the pending handshake comes from it here. The tracepoint
 * fires before num_retrans is incremented, so this retransmit is number
 * num_retrans + 1. snt_synack is the first SYN-ACK's tcp_clock_us()
 * (tcp_make_synack sets it once), the same clock as bpf_ktime_get_ns().
 */
static __always_inline void emit_synack(__u64 sock_id, __u8 id_flags,
					const struct request_sock *req, bool direct)
{
	struct tcptrace_event *e;
	__u64 first_us, now_us;

	if (!sock_wanted(&req->__req_common, NULL, direct))
		return;
	e = event_begin(TCPTRACE_SYNACK_RETRANS);
	if (!e)
		return;
	e->sock_id = sock_id;
	e->flags = id_flags;
	e->oldstate = TCP_LISTEN;
	event_fill_sock_common(e, &req->__req_common, NULL, direct);
	e->retrans = KREAD(direct, req->num_retrans) + 1;
	/* Past struct request_sock: the verifier allows no direct read there. */
	first_us = BPF_CORE_READ((const struct tcp_request_sock *)req, snt_synack);
	now_us = e->ts_ns / 1000;
	if (first_us && now_us >= first_us)
		e->synack_age_us = now_us - first_us;
	event_end_and_wake();
}

/* `tp` as in state.bpf.c: typed by bpf_skc_to_tcp_sock() for direct reads. */
static __always_inline void emit_retrans(const struct tcp_sock *tp, __u64 sock_id, __u8 id_flags,
					 bool direct)
{
	const struct inet_sock *inet = &tp->inet_conn.icsk_inet;
	const struct sock_common *skc = &inet->sk.__sk_common;
	struct tcptrace_event *e;

	if (!family_is_inet(KREAD(direct, skc->skc_family)) || !sock_wanted(skc, inet, direct))
		return;
	e = event_begin(TCPTRACE_RETRANS);
	if (!e)
		return;
	e->sock_id = sock_id;
	e->flags = id_flags;
	e->oldstate = KREAD(direct, skc->skc_state);
	event_fill_sock_common(e, skc, inet, direct);
	e->retrans = KREAD(direct, tp->total_retrans);
	event_end_and_wake();
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(handle_tcp_retransmit_synack, struct sock *sk, const struct request_sock *req)
{
	emit_synack(sock_cookie(sk), 0, req, true);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(handle_tcp_retransmit_skb, struct sock *sk)
{
	const struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (tp)
		emit_retrans(tp, sock_cookie(sk), 0, true);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_synack")
int classic_tcp_retransmit_synack(struct trace_event_raw_tcp_retransmit_synack *ctx)
{
	const struct sock *sk = ctx->skaddr;
	const struct request_sock *req = ctx->req;

	emit_synack((__u64)sk, TCPTRACE_F_ADDR_ID, req, false);
	return 0;
}

/*
 * The event class of tcp_retransmit_skb was renamed (tcp_event_sk_skb until 6.x,
 * tcp_retransmit_skb since), so CO-RE cannot match it by name. Its leading
 * fields never moved: the 8-byte common header, then skbaddr and skaddr. A
 * plain struct, deliberately without preserve_access_index, reads them.
 */
struct classic_retransmit_skb_ctx {
	__u64 common;
	const void *skbaddr;
	const void *skaddr;
};

SEC("tracepoint/tcp/tcp_retransmit_skb")
int classic_tcp_retransmit_skb(struct classic_retransmit_skb_ctx *ctx)
{
	const struct sock *sk = ctx->skaddr;

	emit_retrans((const struct tcp_sock *)sk, (__u64)sk, TCPTRACE_F_ADDR_ID, false);
	return 0;
}
