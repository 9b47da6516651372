// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * other_owner: programs of "another tool" for tests, not part of sluice.
 * They pass every packet. Tests attach them to the hooks sluice manages to
 * check that sluice never replaces another owner's program and tells its
 * programs apart from other tools' (by name: nothing here starts with
 * "sluice_").
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int other_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("classifier")
int other_tc(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC; /* tcx: let the next program decide */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
