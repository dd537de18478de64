// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * Resets: sent (tcp:tcp_send_reset, from tcp_v4_send_reset/tcp_v6_send_reset for
 * an incoming packet and tcp_send_active_reset for aborts) and received
 * (tcp:tcp_receive_reset, net/ipv4/tcp_input.c: tcp_reset, before tcp_done).
 */
#include "common.bpf.h"

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
static __always_inline bool reset_wanted(const struct sock *sk, const struct sk_buff *skb)
{
	struct tcphdr tcp;
	unsigned char *head;

	if (sk) {
		/* Timewait and request sockets have no inet_sport; a full socket
		 * aborting (active reset) has already released skc_num. */
		__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);

		return sock_wanted(&sk->__sk_common, state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV);
	}
	if (!skb)
		return false;
	if (filter_netns && net_inum(BPF_CORE_READ(skb, dev, nd_net.net)) != filter_netns)
		return false;
	if (!filter_nports)
		return true;
	head = BPF_CORE_READ(skb, head);
	if (bpf_probe_read_kernel(&tcp, sizeof(tcp), head + BPF_CORE_READ(skb, transport_header)))
		return false;
	return port_listed(bpf_ntohs(tcp.dest)) || port_listed(bpf_ntohs(tcp.source));
}

static __always_inline void emit_send_reset(const struct sock *sk, const struct sk_buff *skb,
					    __u64 sock_id, __u8 id_flags, __u32 reason,
					    bool has_reason)
{
	struct tcptrace_event *e;

	if (!reset_wanted(sk, skb))
		return;
	e = event_reserve(TCPTRACE_SEND_RESET);
	if (!e)
		return;
	e->flags = id_flags;
	if (has_reason) {
		e->reason = reason;
		e->flags |= TCPTRACE_F_REASON;
	}
	if (sk) {
		e->sock_id = sock_id;
		e->oldstate = BPF_CORE_READ(sk, __sk_common.skc_state);
		event_fill_sock_common(e, &sk->__sk_common);
		if (e->oldstate == TCP_CLOSE)
			fill_sport_from_inet(e, sk);
	} else {
		e->flags |= TCPTRACE_F_NO_SOCKET;
		if (skb)
			e->netns = net_inum(BPF_CORE_READ(skb, dev, nd_net.net));
	}
	if (skb)
		event_fill_from_skb(e, skb);
	event_submit(e);
}

static __always_inline void emit_receive_reset(const struct sock *sk, __u64 sock_id,
					       __u8 id_flags)
{
	struct tcptrace_event *e;

	if (!sock_wanted(&sk->__sk_common, true))
		return;
	e = event_reserve(TCPTRACE_RECV_RESET);
	if (!e)
		return;
	e->sock_id = sock_id;
	e->flags = id_flags;
	e->oldstate = BPF_CORE_READ(sk, __sk_common.skc_state);
	event_fill_sock_common(e, &sk->__sk_common);
	fill_sport_from_inet(e, sk);
	event_submit(e);
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
	const struct sock *sk = (const struct sock *)ctx[0];
	const struct sk_buff *skb = (const struct sk_buff *)ctx[1];
	bool has_reason = bpf_core_type_exists(enum sk_rst_reason);
	__u32 reason = has_reason ? (__u32)ctx[2] : 0;
	__u64 cookie = sk ? bpf_get_socket_cookie((void *)sk) : 0;

	emit_send_reset(sk, skb, cookie, 0, reason, has_reason);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(handle_tcp_receive_reset, const struct sock *sk)
{
	emit_receive_reset(sk, bpf_get_socket_cookie((void *)sk), 0);
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
	emit_send_reset(sk, skb, (__u64)sk, TCPTRACE_F_ADDR_ID, reason, has_reason);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int classic_tcp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	const struct sock *sk = ctx->skaddr;

	emit_receive_reset(sk, (__u64)sk, TCPTRACE_F_ADDR_ID);
	return 0;
}
