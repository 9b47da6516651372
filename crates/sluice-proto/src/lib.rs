//! Pure protocol code for sluice, with no I/O: the reference packet model
//! used to craft frames for BPF_PROG_TEST_RUN fixtures and benchmarks, and
//! an independent parser/checksum verifier for the frames programs return.
//! Everything here is deterministic and safe to fuzz.

pub mod packet;
pub mod verify;
