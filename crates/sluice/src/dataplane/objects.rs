//! The compiled BPF objects, built from `bpf/*.bpf.c` by build.rs and
//! embedded in the binary. The release binary embeds only the programs the
//! daemon runs; the traffic generator and the spin-lock build of the XDP
//! program are compiled in for tests and benchmarks only, like the
//! stand-in for another tool's programs.

/// The XDP firewall and rate limiter (bpf/sluice_xdp.bpf.c).
pub static XDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp.bpf.o"));
/// Forwarding, redirect and L7 capture at TC (bpf/sluice_tc.bpf.c).
pub static TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_tc.bpf.o"));
/// The TCP connection tracer (tracepoint sock/inet_sock_set_state).
pub static TRACE_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_trace.bpf.o"));
/// The XDP program with spin-locked shared buckets instead of
/// compare-and-swap: only the benchmark loads it, to compare the two.
#[cfg(any(test, feature = "test-support"))]
pub static XDP_SPIN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp_spin.bpf.o"));
/// The XDP live-frames traffic generator (tests and benchmarks).
#[cfg(any(test, feature = "test-support"))]
pub static GEN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_gen.bpf.o"));
/// Programs of "another tool" (`other_xdp`, `other_tc`; they pass every
/// packet): tests put them on sluice's hooks.
#[cfg(any(test, feature = "test-support"))]
pub static OTHER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/other_owner.bpf.o"));
