/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * counter.h: the per-CPU packet/byte counter bump shared by the XDP and TC
 * programs (every sl_*_cnt and sl_*stats map holds struct counter).
 */
#ifndef SLUICE_COUNTER_H
#define SLUICE_COUNTER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"

/* Adds one packet of `len` bytes to entry `idx` of a per-CPU array of
 * struct counter; an index out of range is ignored. */
static __always_inline void count(void *map, __u32 idx, __u64 len)
{
	struct counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) { /* per-CPU slot: no atomics needed */
		c->packets++;
		c->bytes += len;
	}
}

#endif /* SLUICE_COUNTER_H */
