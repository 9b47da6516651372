// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sluice_gen: a traffic generator for tests and benchmarks, not part of the
 * dataplane. Run with BPF_PROG_TEST_RUN in XDP live-frames mode inside a lab
 * namespace, it transmits (XDP_TX) the given frame out of the namespace's
 * veth at millions of packets per second. Optionally it randomises the low
 * bits of the IPv4 source address (spoofed-source floods) and fixes the IPv4
 * header checksum.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct gen_cfg {
	__u32 src_base; /* host order */
	__u32 src_mask; /* host order; 0 leaves the frame untouched */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct gen_cfg);
	__uint(max_entries, 1);
} sl_gen_cfg SEC(".maps");

SEC("xdp")
int sluice_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_cfg *cfg = bpf_map_lookup_elem(&sl_gen_cfg, &zero);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if (!cfg || !cfg->src_mask || (void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_TX;
	ip->saddr = bpf_htonl(cfg->src_base | (bpf_get_prandom_u32() & cfg->src_mask));
	ip->check = 0;
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
	for (int i = 0; i < 10; i++) /* 20-byte header, no options */
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = ~sum;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
