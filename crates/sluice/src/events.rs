//! The event pipeline: reads the kernel's ring buffer, decodes and enriches
//! each record (interface names, the rule behind a drop, wall-clock time),
//! and fans events out to subscribers: the SSE stream, the JSONL file and the
//! in-memory history behind `sluice events`, and the connection table
//! behind `sluice conns`.
//!
//! Nothing on this path blocks the kernel. The kernel counts what it could
//! not put in the ring (`sl_ev_lost`); the fan-out is a bounded broadcast
//! channel where a slow subscriber loses its own oldest events, which are
//! counted, and never slows the reader or any other subscriber.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use sluice_abi::{ev, stat, EvConn, EvPacket};
use tokio::sync::broadcast;

use crate::dataplane::{decode, RawEvent};

/// Capacity of the fan-out channel; a subscriber further behind loses events.
pub const CHANNEL: usize = 16384;
// tokio rounds a broadcast channel's capacity up to a power of two; the loss
// accounting (`Hub::uncounted`) relies on the capacity being exactly this.
const _: () = assert!(CHANNEL.is_power_of_two());

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Conn,
    Packet,
    Drop,
    Limit,
    L7,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Conn, Kind::Packet, Kind::Drop, Kind::Limit, Kind::L7];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Conn => "conn",
            Kind::Packet => "packet",
            Kind::Drop => "drop",
            Kind::Limit => "limit",
            Kind::L7 => "l7",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}: expected conn, packet, drop, limit or l7"))
    }
}

/// Parses a comma-separated kind list; empty means every kind.
pub fn parse_kinds(s: &str) -> Result<Vec<Kind>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::parse)
        .collect()
}

/// A TCP connection state change, attributed to its owning process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnEvent {
    pub time: String,
    pub comm: String,
    pub pid: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The new TCP state (ESTABLISHED, CLOSE, ...).
    pub state: String,
    pub old_state: String,
    /// out: a local process connected; in: a local listener accepted.
    pub direction: String,
    pub netns: u32,
    /// On close: time since the first state change seen, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    pub sock: u64,
    /// Kernel time stamp (CLOCK_MONOTONIC ns); not part of the JSON.
    #[serde(skip)]
    pub ts_ns: u64,
}

/// What a rule did to a packet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleRef {
    /// deny, allow or limit.
    pub kind: String,
    /// Rule id (None if the rule was deleted since).
    pub id: Option<i64>,
    pub what: Option<String>,
}

/// A sampled packet, or a dropped one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PacketEvent {
    pub time: String,
    pub interface: String,
    pub ifindex: u32,
    pub len: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: String,
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    Conn(ConnEvent),
    Packet(PacketEvent),
    Drop(PacketEvent),
    Limit(PacketEvent),
    L7(crate::audit::L7Record),
}

impl Event {
    pub fn kind(&self) -> Kind {
        match self {
            Event::Conn(_) => Kind::Conn,
            Event::Packet(_) => Kind::Packet,
            Event::Drop(_) => Kind::Drop,
            Event::Limit(_) => Kind::Limit,
            Event::L7(_) => Kind::L7,
        }
    }
}

pub const TCP_STATES: [&str; 13] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

fn state(s: u8) -> String {
    TCP_STATES.get(s as usize).copied().unwrap_or("UNKNOWN").to_string()
}

fn addr(family: u8, b: [u8; 16]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

fn proto(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Maps kernel timestamps (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    boot: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let mono = Duration::from_nanos(crate::limits::monotonic_ns());
        Clock {
            boot: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, ts_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.boot + Duration::from_nanos(ts_ns)).to_string()
    }

    /// A kernel timestamp (CLOCK_MONOTONIC ns) as ns since the Unix epoch.
    pub fn unix_ns(&self, ts_ns: u64) -> u64 {
        (self.boot + Duration::from_nanos(ts_ns))
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Names a drop's rule from its kind and slot.
pub trait RuleNames: Send + Sync {
    fn name(&self, rule_kind: u8, slot: u32) -> Option<(i64, String)>;
}

fn conn_event(c: &EvConn, clock: &Clock) -> ConnEvent {
    let comm_len = c.comm.iter().position(|&b| b == 0).unwrap_or(16);
    ConnEvent {
        time: clock.wall(c.h.ts_ns),
        comm: String::from_utf8_lossy(&c.comm[..comm_len]).into_owned(),
        pid: c.pid,
        src: addr(c.family, c.saddr),
        sport: c.sport,
        dst: addr(c.family, c.daddr),
        dport: c.dport,
        state: state(c.newstate),
        old_state: state(c.oldstate),
        direction: match c.dir {
            ev::DIR_OUT => "out",
            ev::DIR_IN => "in",
            _ => "unknown",
        }
        .into(),
        netns: c.netns,
        duration_ms: (c.newstate == 7).then(|| c.duration_ns as f64 / 1e6),
        sock: c.sock,
        ts_ns: c.h.ts_ns,
    }
}

/// Turns raw records into events, with interface names cached.
pub struct Decoder {
    pub clock: Clock,
    pub rules: Arc<dyn RuleNames>,
    ifnames: HashMap<u32, String>,
    /// The L7 stage; None drops L7 captures (counted as malformed).
    pub audit: Option<crate::audit::Audit>,
}

impl Decoder {
    pub fn new(rules: Arc<dyn RuleNames>) -> Self {
        Decoder {
            clock: Clock::new(),
            rules,
            ifnames: HashMap::new(),
            audit: None,
        }
    }

    fn ifname(&mut self, ifindex: u32) -> String {
        self.ifnames
            .entry(ifindex)
            .or_insert_with(|| crate::dataplane::ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}")))
            .clone()
    }

    /// Records finished by reassembly, as events.
    fn l7_events(&mut self, done: Vec<crate::audit::Done>) -> Vec<Event> {
        let mut out = Vec::with_capacity(done.len());
        for d in done {
            let name = self.ifname(d.ifindex);
            if let Some(a) = &self.audit {
                out.push(Event::L7(a.record(d, &self.clock, name)));
            }
        }
        out
    }

    /// Feeds one L7 capture; returns the records it completed.
    pub fn l7_segment(&mut self, bytes: &[u8]) -> Option<Vec<Event>> {
        let seg = crate::audit::decode_segment(bytes)?;
        let a = self.audit.as_mut()?;
        a.metrics.segments.fetch_add(1, Ordering::Relaxed);
        let done = a.assembler.segment(seg);
        Some(self.l7_events(done))
    }

    /// Periodic L7 housekeeping (skipped holes, idle connections).
    pub fn l7_tick(&mut self) -> Vec<Event> {
        let Some(a) = self.audit.as_mut() else {
            return Vec::new();
        };
        let done = a.assembler.tick(crate::limits::monotonic_ns());
        self.l7_events(done)
    }

    fn packet(&mut self, p: &EvPacket) -> PacketEvent {
        let interface = self.ifname(p.ifindex);
        let rule = match p.rule_kind {
            ev::RULE_DENY | ev::RULE_ALLOW | ev::RULE_LIMIT => {
                let kind = match p.rule_kind {
                    ev::RULE_DENY => "deny",
                    ev::RULE_ALLOW => "allow",
                    _ => "limit",
                };
                let named = self.rules.name(p.rule_kind, p.rule_slot);
                Some(RuleRef {
                    kind: kind.into(),
                    id: named.as_ref().map(|n| n.0),
                    what: named.map(|n| n.1),
                })
            }
            _ => None,
        };
        PacketEvent {
            time: self.clock.wall(p.h.ts_ns),
            interface,
            ifindex: p.ifindex,
            len: p.len,
            src: addr(p.family, p.saddr),
            sport: p.sport,
            dst: addr(p.family, p.daddr),
            dport: p.dport,
            proto: proto(p.l4proto),
            verdict: stat::NAMES.get(p.verdict as usize).copied().unwrap_or("unknown").into(),
            rule,
        }
    }

    pub fn event(&mut self, raw: &RawEvent) -> Event {
        match raw {
            RawEvent::Conn(c) => Event::Conn(conn_event(c, &self.clock)),
            RawEvent::Packet(p) => Event::Packet(self.packet(p)),
            RawEvent::Drop(p) if p.rule_kind == ev::RULE_LIMIT => Event::Limit(self.packet(p)),
            RawEvent::Drop(p) => Event::Drop(self.packet(p)),
        }
    }
}

/// Counters of the pipeline, by kind.
#[derive(Default)]
pub struct Counters {
    pub received: [AtomicU64; 5],
    /// Records the daemon could not decode.
    pub malformed: AtomicU64,
    /// Events lost by subscribers that fell behind (all subscribers).
    pub lagged: AtomicU64,
    /// TCP connections that reached ESTABLISHED, and that closed.
    pub opened: AtomicU64,
    pub closed: AtomicU64,
}

/// Where one subscriber is in the stream: the events it has taken (or was
/// told it lost) since it subscribed.
struct SubProgress {
    start: u64,
    taken: AtomicU64,
}

/// A subscriber's loss accounting. Losses are counted as they happen, not
/// only when the subscriber reads again (a stalled client cannot read, and
/// may never): whatever is more than the channel's capacity behind is lost.
/// Dropped with the subscription, it counts what is still uncounted.
pub struct SubGuard {
    hub: Arc<Hub>,
    id: u64,
    progress: Arc<SubProgress>,
}

impl SubGuard {
    /// The subscriber took one event (delivered or filtered out).
    pub fn took(&self) {
        self.progress.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// The subscriber was told it lost `n` events.
    pub fn lagged(&self, n: u64) {
        // Both counters move under the lock `lost_by_subscribers` reads
        // them under, so the total never counts these twice or not at all.
        let _h = self.hub.history.lock().unwrap();
        self.hub.counters.lagged.fetch_add(n, Ordering::Relaxed);
        self.progress.taken.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        // Under the lock that orders sends, so no event falls in between.
        let h = self.hub.history.lock().unwrap();
        let lost = self.hub.uncounted(&self.progress, 0);
        self.hub.counters.lagged.fetch_add(lost, Ordering::Relaxed);
        self.hub.subs.lock().unwrap().remove(&self.id);
        drop(h);
    }
}

/// The fan-out point.
pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    /// Events sent into the channel (under the history lock).
    sent: AtomicU64,
    /// Live subscribers' progress, by id.
    subs: Mutex<HashMap<u64, Arc<SubProgress>>>,
    /// The largest subscriber-loss total reported so far.
    lost_reported: AtomicU64,
    next_sub: AtomicU64,
    /// Open and recently closed connections, kept from the conn events.
    pub conns: Mutex<crate::conns::ConnTable>,
    history: Mutex<VecDeque<Arc<Event>>>,
    history_cap: usize,
    pub counters: Counters,
}

impl Hub {
    pub fn new(history_cap: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(CHANNEL);
        Arc::new(Hub {
            tx,
            sent: AtomicU64::new(0),
            subs: Mutex::default(),
            lost_reported: AtomicU64::new(0),
            next_sub: AtomicU64::new(0),
            conns: Mutex::default(),
            history: Mutex::new(VecDeque::new()),
            history_cap,
            counters: Counters::default(),
        })
    }

    pub fn publish(&self, mut e: Event) {
        let k = e.kind();
        // The table completes what the kernel could not know (the owner of
        // a connection older than the tracer) before anyone sees the event.
        if let Event::Conn(c) = &mut e {
            self.conns.lock().unwrap().observe(c);
        }
        self.counters.received[k as usize].fetch_add(1, Ordering::Relaxed);
        if let Event::Conn(c) = &e {
            match c.state.as_str() {
                "ESTABLISHED" => self.counters.opened.fetch_add(1, Ordering::Relaxed),
                "CLOSE" => self.counters.closed.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        let e = Arc::new(e);
        let mut h = self.history.lock().unwrap();
        if self.history_cap > 0 {
            if h.len() == self.history_cap {
                h.pop_front();
            }
            h.push_back(e.clone());
        }
        // No subscriber is not an error.
        if self.tx.send(e).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A receiver with its loss accounting; keep the guard as long as the
    /// receiver, and report what it takes and loses through it.
    pub fn subscribe(self: &Arc<Self>) -> (broadcast::Receiver<Arc<Event>>, SubGuard) {
        let _h = self.history.lock().unwrap();
        let rx = self.tx.subscribe();
        let progress = Arc::new(SubProgress {
            start: self.sent.load(Ordering::Relaxed),
            taken: AtomicU64::new(0),
        });
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        self.subs.lock().unwrap().insert(id, progress.clone());
        let guard = SubGuard {
            hub: self.clone(),
            id,
            progress,
        };
        (rx, guard)
    }

    /// Events a subscriber is so far behind on that the channel has already
    /// overwritten them, and that it has not been told about yet. `slack`
    /// allows for an event a live subscriber has received but not yet
    /// reported taking.
    fn uncounted(&self, p: &SubProgress, slack: u64) -> u64 {
        let behind = self
            .sent
            .load(Ordering::Relaxed)
            .saturating_sub(p.start + p.taken.load(Ordering::Relaxed));
        behind.saturating_sub(CHANNEL as u64 + slack)
    }

    /// Events lost by subscribers: those they were told about, plus those
    /// stalled subscribers are missing right now (at most one late each).
    /// Never decreases, as a Prometheus counter must not.
    pub fn lost_by_subscribers(&self) -> u64 {
        let _h = self.history.lock().unwrap();
        let told = self.counters.lagged.load(Ordering::Relaxed);
        let stalled: u64 = self.subs.lock().unwrap().values().map(|p| self.uncounted(p, 1)).sum();
        let now = told + stalled;
        self.lost_reported.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Recent events of the given kinds (all kinds if empty), oldest first.
    pub fn recent(&self, kinds: &[Kind]) -> Vec<Arc<Event>> {
        let h = self.history.lock().unwrap();
        h.iter()
            .filter(|e| kinds.is_empty() || kinds.contains(&e.kind()))
            .cloned()
            .collect()
    }

    pub fn received(&self) -> HashMap<&'static str, u64> {
        Kind::ALL
            .iter()
            .map(|k| (k.as_str(), self.counters.received[*k as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Drains one raw ring-buffer record.
    pub fn ingest(&self, dec: &mut Decoder, bytes: &[u8]) {
        if bytes.len() >= 2 && u16::from_ne_bytes([bytes[0], bytes[1]]) == ev::L7 {
            match dec.l7_segment(bytes) {
                Some(events) => events.into_iter().for_each(|e| self.publish(e)),
                None => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        match decode(bytes) {
            Some(raw) => self.publish(dec.event(&raw)),
            None => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Reads the ring buffer until the task is dropped.
pub async fn read_ring(ring: aya::maps::RingBuf<aya::maps::MapData>, hub: Arc<Hub>, mut dec: Decoder) {
    use tokio::io::unix::AsyncFd;
    // The ring's fd becomes readable when records are waiting.
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns it,
    // and as_raw_fd always returns that same fd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the event ring buffer; no events will be read");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let ready = tokio::select! {
            r = fd.readable_mut() => Some(r),
            _ = tick.tick() => None,
        };
        let Some(ready) = ready else {
            // L7 captures are written without a wakeup until 64 KiB wait:
            // drain what is there on every tick.
            let ring = fd.get_mut();
            let mut n = 0;
            while let Some(item) = ring.next() {
                hub.ingest(&mut dec, &item);
                n += 1;
                if n == 65536 {
                    break;
                }
            }
            for e in dec.l7_tick() {
                hub.publish(e);
            }
            continue;
        };
        let mut guard = match ready {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "event ring buffer poll failed");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        // A bounded batch per wakeup, so the housekeeping tick still runs
        // under a sustained stream; readiness stays set if records remain.
        let mut n = 0;
        while let Some(item) = ring.next() {
            hub.ingest(&mut dec, &item);
            n += 1;
            if n == 8192 {
                break;
            }
        }
        if n < 8192 {
            guard.clear_ready();
        }
    }
}

/// Appends every event to a JSON Lines file, rotating it by size:
/// `file` → `file.1` → ... → `file.keep` (the oldest is removed).
pub struct JsonlSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: fs::File,
    size: u64,
}

impl JsonlSink {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(JsonlSink {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            file,
            size,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            fs::rename(&self.path, self.rotated(1))?;
            self.file = fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    pub fn write(&mut self, e: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Feeds the JSONL sink from the hub; counts what it falls behind on.
pub async fn run_jsonl(mut sink: JsonlSink, hub: Arc<Hub>) {
    let (mut rx, guard) = hub.subscribe();
    loop {
        match rx.recv().await {
            Ok(e) => {
                guard.took();
                if let Err(err) = sink.write(&e) {
                    tracing::error!(error = %err, path = %sink.path.display(), "writing the JSONL event log");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                guard.lagged(n);
                tracing::warn!(lost = n, "JSONL event log fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoRules;
    impl RuleNames for NoRules {
        fn name(&self, _: u8, slot: u32) -> Option<(i64, String)> {
            (slot == 3).then(|| (42, "deny src 198.18.1.2/32".into()))
        }
    }

    fn drop_event(kind: u8, slot: u32) -> RawEvent {
        let mut p = EvPacket {
            family: 4,
            l4proto: 6,
            verdict: stat::DENY as u8,
            rule_kind: kind,
            rule_slot: slot,
            ..Default::default()
        };
        p.saddr[..4].copy_from_slice(&[198, 18, 1, 2]);
        p.sport = 40000;
        RawEvent::Drop(p)
    }

    #[test]
    fn drops_name_their_rule() {
        let mut d = Decoder::new(Arc::new(NoRules));
        match d.event(&drop_event(ev::RULE_DENY, 3)) {
            Event::Drop(p) => {
                assert_eq!(p.rule.unwrap().id, Some(42));
                assert_eq!(p.src.to_string(), "198.18.1.2");
                assert_eq!((p.proto.as_str(), p.verdict.as_str()), ("tcp", "deny"));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(d.event(&drop_event(ev::RULE_LIMIT, 9)), Event::Limit(_)));
    }

    #[test]
    fn conn_events_decode_addresses_comm_and_duration() {
        let mut c = EvConn {
            pid: 7,
            family: 6,
            oldstate: 1,
            newstate: 7,
            dir: ev::DIR_OUT,
            sport: 1,
            dport: 80,
            duration_ns: 1_500_000,
            ..Default::default()
        };
        c.comm[..4].copy_from_slice(b"curl");
        c.daddr = "2001:2::2".parse::<Ipv6Addr>().unwrap().octets();
        let e = conn_event(&c, &Clock::new());
        assert_eq!(
            (e.comm.as_str(), e.state.as_str(), e.old_state.as_str()),
            ("curl", "CLOSE", "ESTABLISHED")
        );
        assert_eq!(e.dst.to_string(), "2001:2::2");
        assert_eq!(e.duration_ms, Some(1.5));
        assert_eq!(e.direction, "out");
        let json = serde_json::to_value(Event::Conn(e)).unwrap();
        for k in ["time", "comm", "pid", "src", "sport", "dst", "dport", "state", "netns"] {
            assert!(json.get(k).is_some(), "{k} missing: {json}");
        }
        assert_eq!(json["kind"], "conn");
    }

    fn packet(i: usize) -> Event {
        Event::Packet(PacketEvent {
            time: String::new(),
            interface: String::new(),
            ifindex: i as u32,
            len: 0,
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 0,
            dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 0,
            proto: String::new(),
            verdict: String::new(),
            rule: None,
        })
    }

    #[test]
    fn a_slow_subscriber_loses_only_its_own_events() {
        let hub = Hub::new(10);
        let (mut slow, slow_guard) = hub.subscribe();
        let (mut fast, fast_guard) = hub.subscribe();
        let n = CHANNEL + 100;
        let mut got = 0;
        for i in 0..n {
            hub.publish(packet(i));
            while fast.try_recv().is_ok() {
                fast_guard.took();
                got += 1;
            }
        }
        assert_eq!(got, n, "the fast subscriber saw everything");
        // The stalled one's loss is counted before it reads again (but one
        // event, which could be in a live subscriber's hands).
        assert_eq!(hub.lost_by_subscribers(), 99);
        let mut seen = 0;
        let mut lost = 0;
        loop {
            match slow.try_recv() {
                Ok(_) => {
                    slow_guard.took();
                    seen += 1
                }
                Err(broadcast::error::TryRecvError::Lagged(k)) => {
                    slow_guard.lagged(k);
                    lost += k as usize
                }
                Err(_) => break,
            }
        }
        assert_eq!(seen + lost, n, "received + counted lost == published");
        assert_eq!(hub.lost_by_subscribers(), lost as u64, "told once, counted once");
        assert_eq!(hub.recent(&[]).len(), 10, "history is bounded");
    }

    #[test]
    fn a_subscriber_that_leaves_while_stalled_has_its_loss_counted() {
        let hub = Hub::new(0);
        let (rx, guard) = hub.subscribe();
        for i in 0..CHANNEL + 250 {
            hub.publish(packet(i));
        }
        assert_eq!(hub.lost_by_subscribers(), 249);
        drop((rx, guard));
        assert_eq!(hub.lost_by_subscribers(), 250, "kept after it left");
        assert_eq!(hub.counters.lagged.load(Ordering::Relaxed), 250);
        // Nobody listening: nothing is lost by anyone.
        for i in 0..CHANNEL + 10 {
            hub.publish(packet(i));
        }
        assert_eq!(hub.lost_by_subscribers(), 250);
    }

    #[test]
    fn jsonl_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.jsonl");
        let mut sink = JsonlSink::open(&path, 4096, 2).unwrap();
        let e = Event::Conn(conn_event(
            &EvConn {
                family: 4,
                ..Default::default()
            },
            &Clock::new(),
        ));
        for _ in 0..200 {
            sink.write(&e).unwrap();
        }
        for p in [
            path.clone(),
            dir.path().join("ev.jsonl.1"),
            dir.path().join("ev.jsonl.2"),
        ] {
            let len = fs::metadata(&p).unwrap().len();
            assert!(len > 0 && len <= 4096, "{} is {len} bytes", p.display());
            for line in fs::read_to_string(&p).unwrap().lines() {
                serde_json::from_str::<Event>(line).unwrap();
            }
        }
        assert!(!dir.path().join("ev.jsonl.3").exists());
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(parse_kinds("conn, drop").unwrap(), vec![Kind::Conn, Kind::Drop]);
        assert_eq!(parse_kinds("").unwrap(), vec![]);
        assert!(parse_kinds("conn,bogus").is_err());
    }
}
