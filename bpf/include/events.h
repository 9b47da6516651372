/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h: the event ring buffer and its per-CPU lost counters. Every
 * program that emits events includes this; the maps are pinned by name, so
 * all objects share one ring. The kernel side never waits: a failed
 * reservation is counted in sl_ev_lost and the event is dropped.
 */
#ifndef SLUICE_EVENTS_H
#define SLUICE_EVENTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SLUICE_DEFAULT_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EVL_COUNT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_ev_lost SEC(".maps");

static __always_inline void ev_lost(__u32 idx)
{
	__u64 *n = bpf_map_lookup_elem(&sl_ev_lost, &idx);
	if (n)
		(*n)++;
}

/* Reserves an event of `size` bytes and fills its header; NULL (and counted
 * as lost under `lost_idx`) when the ring is full. */
static __always_inline void *ev_reserve(__u32 size, __u16 kind, __u32 lost_idx)
{
	struct ev_hdr *h = bpf_ringbuf_reserve(&sl_events, size, 0);
	if (!h) {
		ev_lost(lost_idx);
		return 0;
	}
	h->kind = kind;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = bpf_ktime_get_ns();
	return h;
}

#endif /* SLUICE_EVENTS_H */
