//! Pure protocol code for sluice, with no I/O, deterministic and safe to
//! fuzz:
//! - [`packet`]: the reference packet model used to craft frames for
//!   BPF_PROG_TEST_RUN fixtures and benchmarks;
//! - [`verify`]: an independent parser and checksum verifier for the frames
//!   the programs return;
//! - [`xdp_model`]: the reference model of the XDP firewall's verdicts, and
//!   [`framegen`]: seeded random and hostile frames and rule sets to
//!   compare it with the real program;
//! - [`l7`]: the HTTP/1.x, Redis and MySQL parsers that turn the two byte
//!   streams of a TCP connection into paired requests and responses.

pub mod framegen;
pub mod l7;
pub mod packet;
pub mod verify;
pub mod xdp_model;
