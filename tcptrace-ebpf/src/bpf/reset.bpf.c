// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Resets: sent (tcp:tcp_send_reset, from tcp_v4_send_reset/tcp_v6_send_reset for
 * an incoming packet and tcp_send_active_reset for aborts) and received
 * (tcp:tcp_receive_reset, net/ipv4/tcp_input.c: tcp_reset, before tcp_done).
 */
#include "common.bpf.h"

/* The device's namespace, for a reset sent without a socket (rare: read
 * through probes whatever the program type). */
static __always_inline __u32 skb_netns(const struct sk_buff *skb)
{
	return net_inum(BPF_CORE_READ(skb, dev, nd_net.net), false);
}

/*
 * sk is NULL when no socket matched the packet (the NO_SOCKET reset of a
 * connect to a closed port), and may be a request or timewait socket: only its
 * sock_common part is read. With a packet, the tuple comes from the packet,
 * reversed, since a listener's own tuple has no peer; the active resets carry
 * no packet. For active resets the tracepoint fires after tcp_set_state(CLOSE),
 * so the state read here is CLOSE: userspace takes the state before the reset
 * from the socket's previous transition.
 */
/* The filters for a reset: the socket's, or for a packet without one its
 * device's namespace and its ports. */
static __always_inline bool reset_wanted(const struct sock *sk, const struct inet_sock *inet,
					 const struct sk_buff *skb, bool direct)
{
	struct tcphdr tcp;
	unsigned char *head;

	if (sk)
		return sock_wanted(&sk->__sk_common, inet, direct);
	if (!skb)
		return false;
	if (filter_netns && skb_netns(skb) != filter_netns)
		return false;
	if (!filter_nports)
		return true;
	head = BPF_CORE_READ(skb, head);
	if (bpf_probe_read_kernel(&tcp, sizeof(tcp), head + BPF_CORE_READ(skb, transport_header)))
		return false;
	return port_listed(bpf_ntohs(tcp.dest)) || port_listed(bpf_ntohs(tcp.source));
}

/*
 * `inet` is the socket as a full inet_sock, NULL for timewait and request
 * sockets, which have no inet_sport (a full socket aborting has already
 * released skc_num, see event_fill_sock_common).
 */
static __always_inline void emit_send_reset(const struct sock *sk, const struct inet_sock *inet,
					    const struct sk_buff *skb, __u64 sock_id, __u8 id_flags,
					    __u32 reason, bool has_reason, bool direct)
{
	struct tcptrace_event *e;

	if (!reset_wanted(sk, inet, skb, direct))
		return;
	e = event_begin(TCPTRACE_SEND_RESET);
	if (!e)
		return;
	e->flags = id_flags;
	if (has_reason) {
		e->reason = reason;
		e->flags |= TCPTRACE_F_REASON;
	}
	if (sk) {
		e->sock_id = sock_id;
		e->oldstate = KREAD(direct, sk->__sk_common.skc_state);
		event_fill_sock_common(e, &sk->__sk_common, inet, direct);
	} else {
		e->flags |= TCPTRACE_F_NO_SOCKET;
		if (skb)
			e->netns = skb_netns(skb);
	}
	if (skb)
		event_fill_from_skb(e, skb);
	event_end_and_wake();
}

static __always_inline void emit_receive_reset(const struct sock *sk, const struct inet_sock *inet,
					       __u64 sock_id, __u8 id_flags, bool direct)
{
	struct tcptrace_event *e;

	if (!sock_wanted(&sk->__sk_common, inet, direct))
		return;
	e = event_begin(TCPTRACE_RECV_RESET);
	if (!e)
		return;
	e->sock_id = sock_id;
	e->flags = id_flags;
	e->oldstate = KREAD(direct, sk->__sk_common.skc_state);
	event_fill_sock_common(e, &sk->__sk_common, inet, direct);
	event_end_and_wake();
}

/*
 * Written without BPF_PROG: the third argument, enum sk_rst_reason, exists only
 * since 6.10, and reading ctx[2] where it does not exist fails verification.
 * CO-RE turns the type check into a constant, so the verifier never sees the
 * read on older kernels.
 */
SEC("tp_btf/tcp_send_reset")
int handle_tcp_send_reset(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	const struct sk_buff *skb = (const struct sk_buff *)ctx[1];
	bool has_reason = bpf_core_type_exists(enum sk_rst_reason);
	__u32 reason = has_reason ? (__u32)ctx[2] : 0;
	__u64 cookie = sk ? sock_cookie(sk) : 0;
	/* NULL unless a full TCP socket: timewait and request sockets. */
	const struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : NULL;

	emit_send_reset(sk, tp ? &tp->inet_conn.icsk_inet : NULL, skb, cookie, 0, reason,
			has_reason, true);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(handle_tcp_receive_reset, struct sock *sk)
{
	const struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (tp)
		emit_receive_reset(sk, &tp->inet_conn.icsk_inet, sock_cookie(sk), 0, true);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int classic_tcp_send_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	const struct sock *sk = ctx->skaddr;
	const struct sk_buff *skb = ctx->skbaddr;
	bool has_reason = bpf_core_field_exists(ctx->reason);
	__u32 reason = 0;

	if (has_reason)
		reason = BPF_CORE_READ(ctx, reason);
	__u8 state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : TCP_CLOSE;
	bool full = sk && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;

	emit_send_reset(sk, full ? (const struct inet_sock *)sk : NULL, skb, (__u64)sk,
			TCPTRACE_F_ADDR_ID, reason, has_reason, false);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int classic_tcp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	const struct sock *sk = ctx->skaddr;

	emit_receive_reset(sk, (const struct inet_sock *)sk, (__u64)sk, TCPTRACE_F_ADDR_ID, false);
	return 0;
}
