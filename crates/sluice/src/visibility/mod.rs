//! Visibility: what the kernel reports, turned into records people read.
//!
//! - [`event`]: the event types (connections, sampled and dropped packets,
//!   limit drops, L7 records);
//! - [`decode`]: raw ring records into events, with names and times;
//! - [`pipeline`]: the ring reader; [`hub`]: the fan-out with loss
//!   accounting; [`jsonl`]: the JSON Lines log;
//! - [`conns`]: the connection table behind `sluice conns`;
//! - [`l7`]: reassembly of captured TCP payload into paired HTTP, Redis and
//!   MySQL requests (parsed by `sluice_proto::l7`), their metrics and their
//!   audit log;
//! - [`tables`]: the seams to the kernel's event and capture maps.

pub mod conns;
pub mod decode;
pub mod event;
pub mod hub;
pub mod jsonl;
pub mod l7;
pub mod pipeline;
pub mod tables;

pub use decode::{Decoder, RawEvent, RuleNames};
pub use event::{parse_kinds, ConnEvent, Event, Kind, PacketEvent, RuleRef};
pub use hub::Hub;
