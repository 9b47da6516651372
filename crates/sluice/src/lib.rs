//! sluice: eBPF traffic control and visibility for Linux hosts and their
//! containers. This library holds everything the `sluice` binary does; the
//! binary only parses the command line and prints.

pub mod api;
pub mod audit;
pub mod config;
pub mod conns;
pub mod dataplane;
pub mod events;
pub mod firewall;
pub mod gen;
pub mod l7;
pub mod lab;
pub mod limits;
pub mod nat;
pub mod policy;
pub mod probes;
pub mod procfs;
pub mod rules;
pub mod store;
pub mod watch;
