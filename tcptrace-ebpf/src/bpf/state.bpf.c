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
 * Returns the ring whose reader is due a wake-up, or -1: the caller wakes it
 * (see catch_inet_sock_set_state for why not here).
 *
 * `sk` is read within struct sock only. Fields past it (the local port in
 * inet_sock, the RTT in tcp_sock) need the socket typed as a tcp_sock:
 * tp_btf programs get that from bpf_skc_to_tcp_sock(), which the verifier
 * requires before it allows such reads, a helper call made only for the
 * events that read them; classic programs read through probes anyway.
 */
static __always_inline const struct tcp_sock *as_tcp_sock(const struct sock *sk, bool direct)
{
	return direct ? bpf_skc_to_tcp_sock((struct sock *)sk) : (const struct tcp_sock *)sk;
}

static __always_inline int emit_state(const struct sock *sk, __u64 sock_id, __u8 flags,
				      int oldstate, int newstate, bool direct)
{
	const struct sock_common *skc = &sk->__sk_common;
	const struct tcp_sock *tp = NULL;
	const struct inet_sock *inet = NULL;
	struct tcptrace_event *e;

	if (!family_is_inet(KREAD(direct, skc->skc_family)))
		return -1;
	/* inet_sport is read when skc_num is 0 (see event_fill_sock_common)
	 * or for the port filter; the RTT at ESTABLISHED. */
	if (filter_nports || !KREAD(direct, skc->skc_num) || newstate == TCP_ESTABLISHED) {
		tp = as_tcp_sock(sk, direct);
		if (!tp)
			return -1;
		inet = &tp->inet_conn.icsk_inet;
	}
	if (!sock_wanted(skc, inet, direct))
		return -1;
	e = event_begin(TCPTRACE_STATE);
	if (!e)
		return -1;
	e->sock_id = sock_id;
	e->flags = flags;
	e->oldstate = oldstate;
	e->newstate = newstate;
	event_fill_sock_common(e, skc, inet, direct);
	if (in_process_context(oldstate, newstate))
		event_fill_task(e);
	if (newstate == TCP_ESTABLISHED && tp) {
		/* First RTT sample and retransmits of the handshake: the child's
		 * SYN_RECV dwell is ~20 us whatever the handshake took, because the
		 * child is only created when the final ACK arrives. */
		e->srtt_us = KREAD(direct, tp->srtt_us) >> 3;
		e->retrans = KREAD(direct, tp->total_retrans);
	}
	return event_end();
}

static __always_inline int state_btf(struct sock *sk, int oldstate, int newstate, __u8 flags)
{
	/* The tracepoint fires for SCTP and MPTCP sockets too. */
	if (sk->sk_protocol != IPPROTO_TCP)
		return -1;
	return emit_state(sk, sock_cookie(sk), flags, oldstate, newstate, true);
}

/*
 * The kernel runs a tp_btf program at most once per CPU at a time
 * (kernel/trace/bpf_trace.c: __bpf_trace_run counts a nested run as a
 * recursion miss and skips it). A run in process context (connect, close) can
 * be interrupted, and the softirqs run on the interrupt's exit move other
 * sockets: under loopback churn about 1 event in 2,000 was skipped.
 * catch_inet_sock_set_state, a second program on the same tracepoint with its
 * own guard, handles exactly those events. The begun_* and catcher_wake
 * fields of this CPU's cpu_memo link the two.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct cpu_memo *cpu = this_cpu_memo();
	int wake;

	if (!cpu)
		return 0;
	/* First of all: from here on, the catcher knows this event is handled. */
	cpu->begun_states = oldstate << 8 | newstate;
	cpu->begun_sk = (__u64)sk;
	wake = state_btf(sk, oldstate, newstate, 0);
	if (wake >= 0)
		cpu->catcher_wake = wake + 1;
	return 0;
}

/*
 * Attached after handle_inet_sock_set_state, so it runs right after it for
 * every event. If the main program did not begin this very event, the kernel
 * skipped it: an interrupt landed in the main program's run, and this event
 * came from the softirqs run on the interrupt's exit. Then this program
 * handles it. Matching the event rather than a "running" flag leaves no
 * window at the main program's edges, where a flag is not yet set or already
 * cleared while the kernel's guard still holds: such a flag let a third of
 * the skipped events through.
 *
 * The match can fail for an event the main program did handle: when other
 * events run between the two programs' runs of it (an interrupt there, or
 * the task preempted there). This program then writes it a second time,
 * flagged TCPTRACE_F_CAUGHT like all its records, and userspace drops a
 * caught record that repeats its socket's last transition (a socket cannot
 * make the same transition twice in a row). Under loopback churn: a few in
 * a million events.
 *
 * It also makes the main program's wake-ups, after its match. A wake-up is a
 * self-IPI that lands a moment after it is sent, and the softirqs run on its
 * exit move more sockets; sent from here, it finds the main program idle.
 *
 * Still lost, and counted: events that interrupt this program while it
 * handles one. Userspace counts the main program's skipped runs, minus
 * catches, plus dropped repeats as lost.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(catch_inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct cpu_memo *cpu = this_cpu_memo();
	bool begun;
	int wake;

	if (!cpu)
		return 0;
	begun = cpu->begun_sk == (__u64)sk && cpu->begun_states == (oldstate << 8 | newstate);
	if (cpu->catcher_wake) {
		wake = cpu->catcher_wake - 1;
		cpu->catcher_wake = 0;
		ring_wake(wake);
	}
	if (begun)
		return 0;
	cpu_count(&caught);
	/* Nothing runs after this program to defer to: wake at once. */
	wake = state_btf(sk, oldstate, newstate, TCPTRACE_F_CAUGHT);
	if (wake >= 0)
		ring_wake(wake);
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
	int wake;

	if (protocol != IPPROTO_TCP)
		return 0;
	wake = emit_state(sk, (__u64)sk, TCPTRACE_F_ADDR_ID, oldstate, newstate, false);
	if (wake >= 0)
		ring_wake(wake);
	return 0;
}
