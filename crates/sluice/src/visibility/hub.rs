//! The fan-out point: every decoded event goes to the in-memory history
//! behind `sluice events`, the connection table behind `sluice conns`, and
//! a bounded broadcast channel that the SSE streams and the JSONL log
//! subscribe to.
//!
//! Nothing here blocks the ring reader: a slow subscriber loses its own
//! oldest events, which are counted (also while it is stalled and when it
//! leaves), and never slows the reader or any other subscriber.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use sluice_abi::ev;
use tokio::sync::broadcast;

use super::{
    super::model::{Identify, Nobody},
    conns::ConnTable,
    decode::{decode, Decoder},
    event::{Event, Kind},
};

/// Capacity of the fan-out channel; a subscriber further behind loses events.
pub const CHANNEL: usize = 16384;
// tokio rounds a broadcast channel's capacity up to a power of two; the loss
// accounting (`Hub::uncounted`) relies on the capacity being exactly this.
const _: () = assert!(CHANNEL.is_power_of_two());

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
    pub conns: Mutex<ConnTable>,
    history: Mutex<VecDeque<Arc<Event>>>,
    history_cap: usize,
    pub counters: Counters,
    /// Names the container behind each record.
    who: Arc<dyn Identify>,
    /// pid -> container, valid for one generation of the registry.
    pids: Mutex<(u64, HashMap<u32, Option<String>>)>,
}

/// Processes remembered per registry generation (a bound, not a target).
const PID_CACHE: usize = 65536;

impl Hub {
    pub fn new(history_cap: usize) -> Arc<Self> {
        Self::with_identity(history_cap, Arc::new(Nobody))
    }

    /// A hub that names every record's containers through `who`.
    pub fn with_identity(history_cap: usize, who: Arc<dyn Identify>) -> Arc<Self> {
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
            who,
            pids: Mutex::new((0, HashMap::new())),
        })
    }

    /// The container of process `pid`, cached until the registry changes.
    fn container_of_pid(&self, pid: u32) -> Option<String> {
        if pid == 0 {
            return None;
        }
        let gen = self.who.generation();
        {
            let mut c = self.pids.lock().unwrap();
            if c.0 != gen || c.1.len() >= PID_CACHE {
                *c = (gen, HashMap::new());
            }
            if let Some(hit) = c.1.get(&pid) {
                return hit.clone();
            }
        }
        let name = self.who.by_pid(pid).map(|w| w.name);
        self.pids.lock().unwrap().1.insert(pid, name.clone());
        name
    }

    fn by_addr(&self, a: std::net::IpAddr) -> Option<String> {
        self.who.by_addr(a).map(|w| w.name)
    }

    /// Names the containers (and, for an L7 record, the processes) at both
    /// ends of a record.
    fn attribute(&self, e: &mut Event) {
        match e {
            Event::Conn(c) => {
                c.container = self.container_of_pid(c.pid).or_else(|| self.by_addr(c.src));
                c.peer_container = self.by_addr(c.dst);
            }
            Event::Packet(p) | Event::Drop(p) | Event::Limit(p) => {
                p.container = self
                    .who
                    .by_ifindex(p.ifindex)
                    .map(|w| w.name)
                    .or_else(|| self.by_addr(p.src));
                p.peer_container = self.by_addr(p.dst).filter(|d| p.container.as_ref() != Some(d));
            }
            Event::L7(r) => {
                let server = r.target.unwrap_or(r.server);
                let server_port = r.target_port.unwrap_or(r.server_port);
                r.client_container = self.by_addr(r.client);
                r.server_container = self.by_addr(server);
                let t = self.conns.lock().unwrap();
                if let Some((pid, comm)) = t.owner((r.client, r.client_port), (r.server, r.server_port)) {
                    r.client_pid = Some(pid);
                    r.client_comm = Some(comm);
                }
                if let Some((pid, comm)) = t.owner((server, server_port), (r.client, r.client_port)) {
                    r.server_pid = Some(pid);
                    r.server_comm = Some(comm);
                }
            }
        }
    }

    pub fn publish(&self, mut e: Event) {
        let k = e.kind();
        // The table completes what the kernel could not know (the owner of
        // a connection older than the tracer) before anyone sees the event.
        if let Event::Conn(c) = &mut e {
            self.conns.lock().unwrap().observe(c);
        }
        self.attribute(&mut e);
        if let Event::Conn(c) = &e {
            self.conns.lock().unwrap().name(c);
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::visibility::event::PacketEvent;

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
            container: None,
            peer_container: None,
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
}
