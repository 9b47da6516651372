// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Host build of bpf/include/gcra.h for the unit tests: exported wrappers
 * around the exact inline functions the XDP program uses. */
#include "gcra.h"

unsigned sl_gcra_time_shift(void) { return GCRA_TIME_SHIFT; }

__u64 sl_gcra_cost(__u64 units, __u64 unit_fp, __u32 shift) { return gcra_cost(units, unit_fp, shift); }
__u64 sl_gcra_warm(__u64 cost, __u64 now, __u64 ws, __u64 w) { return gcra_warm(cost, now, ws, w); }
__s64 sl_gcra_limit(__u64 tau, __u64 cost) { return gcra_limit(tau, cost); }
int sl_gcra_admit(__u64 *tat, __u64 now, __s64 limit, __u64 charge) { return gcra_admit(tat, now, limit, charge); }
