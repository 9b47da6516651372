/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * gcra.h: the rate limiter's arithmetic, with no BPF helpers so that the
 * very same code is also compiled for the host and unit-tested
 * (crates/sluice/tests/gcra_math.rs through bpf/test/gcra_host.c).
 *
 * The limiter is GCRA (the "virtual scheduling" form of a token bucket): a
 * bucket is one u64, its theoretical arrival time (TAT) on the kernel's
 * monotonic clock. A packet whose units cost `cost` ns of rate-time conforms
 * if max(TAT, now) - now <= tau - cost, where tau = burst * ns-per-unit
 * (so an idle bucket admits exactly `burst` units at once); a conforming
 * packet advances TAT by its charge: the cost, or during warm-up the cost
 * scaled up by up to 3x. Time is absolute, so there is no refill timer and
 * no drift; all comparisons are wrap-safe. A new bucket starts with TAT = now.
 *
 * TAT, costs and tau are in 1/256 ns (GCRA_TIME_SHIFT), so that even at
 * 10^9 packets/s a packet's cost (256 units) is not lost to rounding; the
 * monotonic clock in those units wraps after 2.3 years of uptime, which the
 * wrap-safe comparisons absorb. Warm-up bookkeeping stays in plain ns.
 */
#ifndef SLUICE_GCRA_H
#define SLUICE_GCRA_H

#include <linux/types.h>
#include "sluice_abi.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* TAT units per ns: 1 << GCRA_TIME_SHIFT (an ABI constant, the daemon
 * computes rates in the same unit). */
#define GCRA_TIME_SHIFT SLUICE_GCRA_TIME_SHIFT
/* Warm-up progress is fixed point: GCRA_WARM_ONE is 1.0. */
#define GCRA_WARM_ONE 1024
/* Sentinel's cold factor: a cold rule admits rate / 3. */
#define GCRA_COLD_FACTOR 3
/* Compare-and-swap attempts before a contended packet is dropped. */
#define GCRA_CAS_TRIES 4

/* True if time a is after time b (wrap-safe on the u64 clock). */
static __always_inline int gcra_after(__u64 a, __u64 b)
{
	return (__s64)(a - b) > 0;
}

/* Rate-time of `units` (packets or bytes), in 1/256 ns:
 * (units * unit_fp) >> shift. User space picks shift so the product cannot
 * overflow. */
static __always_inline __u64 gcra_cost(__u64 units, __u64 unit_fp, __u32 shift)
{
	return (units * unit_fp) >> (shift & 63);
}

/* Warm-up: the admitted rate ramps linearly from rate/3 to rate over
 * warmup_ns after warm_start (times in ns), i.e. the cost is scaled by
 * 3 / (1 + 2p). */
static __always_inline __u64 gcra_warm(__u64 cost, __u64 now, __u64 warm_start, __u64 warmup_ns)
{
	if (!warmup_ns)
		return cost;
	__u64 el = gcra_after(now, warm_start) ? now - warm_start : 0;
	if (el >= warmup_ns)
		return cost;
	__u64 p = el * GCRA_WARM_ONE / warmup_ns;
	__u64 num = GCRA_COLD_FACTOR * GCRA_WARM_ONE;
	__u64 den = GCRA_WARM_ONE + (GCRA_COLD_FACTOR - 1) * p;
	/* cost < 2^62 (user space bounds units * unit_fp), but cost * num may
	 * not fit in 64 bits: then divide first, where the rounding is under
	 * 2^-40 of the cost. The result, at most 3 * cost, always fits. */
	if (cost > ~0ULL / num)
		return cost / den * num;
	return cost * num / den;
}

/* One decision: 1 and *ntat set if the packet conforms, else 0. `limit` is
 * tau - cost (how far ahead TAT may already be); `charge` advances TAT. */
static __always_inline int gcra_check(__u64 tat, __u64 now, __s64 limit, __u64 charge, __u64 *ntat)
{
	/* TAT 0 is a bucket never initialised (e.g. maps re-created after
	 * `sluice down`): new, whatever the uptime. */
	__u64 base = tat && gcra_after(tat, now) ? tat : now;
	if ((__s64)(base - now) > limit)
		return 0;
	*ntat = base + charge;
	return 1;
}

/* The tolerance left for a packet of this cost (negative: never fits). */
static __always_inline __s64 gcra_limit(__u64 tau, __u64 cost)
{
	return (__s64)tau - (__s64)cost;
}

/* Lock-free admission on a shared TAT: a bounded compare-and-swap loop, so
 * no update is lost when several CPUs hit one bucket. A packet that loses
 * every race is treated as over the limit (the bucket is that busy). */
static __always_inline int gcra_admit(__u64 *tat_p, __u64 now, __s64 limit, __u64 charge)
{
	for (int i = 0; i < GCRA_CAS_TRIES; i++) {
		__u64 tat = *(volatile __u64 *)tat_p;
		__u64 ntat;
		if (!gcra_check(tat, now, limit, charge, &ntat))
			return 0;
		if (__sync_val_compare_and_swap(tat_p, tat, ntat) == tat)
			return 1;
	}
	return 0;
}

#endif /* SLUICE_GCRA_H */
