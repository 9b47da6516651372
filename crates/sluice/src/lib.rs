//! sluice: eBPF traffic control and visibility for Linux hosts and their
//! containers. This library holds everything the `sluice` binary does; the
//! binary only parses the command line and prints errors.
//!
//! The modules are layered; each may use only the layers below it (a test,
//! `tests/architecture.rs`, enforces this, see `ARCHITECTURE.md`):
//!
//! | layer | modules |
//! |---|---|
//! | entry points | [`cli`], [`daemon`] |
//! | HTTP | [`api`] |
//! | operations across capabilities | [`control`] |
//! | capabilities (never use each other) | [`firewall`], [`limits`], [`forward`], [`visibility`] |
//! | kernel and storage | [`dataplane`], [`store`], [`lab`] |
//! | base | [`model`], [`sys`] |

pub mod api;
pub mod cli;
pub mod containers;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod firewall;
pub mod forward;
pub mod lab;
pub mod limits;
pub mod model;
pub mod store;
pub mod sys;
pub mod visibility;
