// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sluice_trace: the TCP connection log. One tracepoint,
 * sock/inet_sock_set_state, sees every TCP state change in every network
 * namespace. Attribution:
 *  - an outbound connection (CLOSE -> SYN_SENT) runs in the connecting
 *    task's connect(): the current pid/comm are the right ones;
 *  - a listener (-> LISTEN) runs in listen(): its owner is remembered by
 *    (netns, family, port);
 *  - an inbound connection (SYN_RECV -> ESTABLISHED) runs in softirq, where
 *    "current" is whatever task was interrupted, so the owner of the
 *    listening socket is used instead.
 * Each socket's owner and first-seen time are kept until CLOSE, so every
 * later transition, and the duration on close, carry them.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "sluice_abi.h"
#include "events.h"

/* Only the fields we read, relocated by CO-RE against the running kernel. */
struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));
struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));
typedef struct {
	struct net *net;
} possible_net_t;
struct sock_common {
	possible_net_t skc_net;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

/* /sys/kernel/tracing/events/sock/inet_sock_set_state/format */
struct set_state_args {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

struct sock_info {
	struct owner o;
	__u64 start_ns;
	__u8 dir;
};



/* Live sockets: owner and first-seen time. LRU so a missed CLOSE cannot
 * leak entries forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct sock_info);
	__uint(max_entries, SLUICE_SOCKS_ENTRIES);
} sl_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct listen_key);
	__type(value, struct owner);
	__uint(max_entries, 16384);
} sl_listeners SEC(".maps");

static __always_inline __u32 sk_netns(const void *sk)
{
	return BPF_CORE_READ((struct sock *)sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void current_owner(struct owner *o)
{
	o->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

SEC("tracepoint/sock/inet_sock_set_state")
int sluice_conn(struct set_state_args *a)
{
	if (a->protocol != IPPROTO_TCP)
		return 0;
	__u64 sk = (__u64)a->skaddr;
	__u32 netns = sk_netns(a->skaddr);
	int olds = a->oldstate, news = a->newstate;
	struct listen_key lk = { .netns = netns, .family = a->family, .port = a->sport };

	if (news == TCP_LISTEN) {
		struct owner o = {};
		current_owner(&o);
		bpf_map_update_elem(&sl_listeners, &lk, &o, BPF_ANY);
		return 0; /* listeners are not connections */
	}
	/* An accepted child is cloned from its listener, so its first change
	 * is LISTEN -> SYN_RECV; only LISTEN -> CLOSE is the listener going. */
	if (olds == TCP_LISTEN && news == TCP_CLOSE) {
		/* Only the owner's close removes the entry: a listen() that fails
		 * with EADDRINUSE also goes LISTEN -> CLOSE, in another process. */
		struct owner *o = bpf_map_lookup_elem(&sl_listeners, &lk);
		if (o && o->pid == bpf_get_current_pid_tgid() >> 32)
			bpf_map_delete_elem(&sl_listeners, &lk);
		return 0;
	}

	struct sock_info *si = bpf_map_lookup_elem(&sl_socks, &sk);
	struct sock_info fresh = {};
	if (!si) {
		fresh.start_ns = bpf_ktime_get_ns();
		if (olds == TCP_CLOSE && news == TCP_SYN_SENT) {
			fresh.dir = CONN_DIR_OUT;
			current_owner(&fresh.o);
		} else if (olds == TCP_SYN_RECV || news == TCP_SYN_RECV) {
			fresh.dir = CONN_DIR_IN;
			struct owner *o = bpf_map_lookup_elem(&sl_listeners, &lk);
			if (o)
				fresh.o = *o;
		}
		if (news != TCP_CLOSE)
			bpf_map_update_elem(&sl_socks, &sk, &fresh, BPF_ANY);
		si = &fresh;
	}

	struct ev_conn *e = ev_reserve(sizeof(*e), EV_CONN, EVL_CONN);
	if (e) {
		e->sock = sk;
		e->duration_ns = news == TCP_CLOSE ? e->h.ts_ns - si->start_ns : 0;
		e->pid = si->o.pid;
		e->netns = netns;
		__builtin_memcpy(e->comm, si->o.comm, sizeof(e->comm));
		e->family = a->family == AF_INET6 ? 6 : 4;
		e->oldstate = olds;
		e->newstate = news;
		e->dir = si->dir;
		e->sport = a->sport;
		e->dport = a->dport;
		if (a->family == AF_INET6) {
			__builtin_memcpy(e->saddr, a->saddr_v6, 16);
			__builtin_memcpy(e->daddr, a->daddr_v6, 16);
		} else {
			__builtin_memset(e->saddr, 0, 16);
			__builtin_memset(e->daddr, 0, 16);
			__builtin_memcpy(e->saddr, a->saddr, 4);
			__builtin_memcpy(e->daddr, a->daddr, 4);
		}
		bpf_ringbuf_submit(e, 0);
	}
	if (news == TCP_CLOSE)
		bpf_map_delete_elem(&sl_socks, &sk);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
