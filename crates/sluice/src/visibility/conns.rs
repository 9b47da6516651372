//! The connection table behind `sluice conns` and `GET /v1/conns`: every TCP
//! connection open on the host now, in every network namespace, plus the
//! most recently closed ones, each with its owner, its state changes and,
//! once closed, its duration.
//!
//! It is built from the tracer's state changes (keyed by the kernel's socket
//! address) and seeded from /proc when the tracer attaches, because the
//! tracer only sees a connection from its next state change on: a
//! connection older than the daemon would otherwise be missing from the
//! list until it changed state, and then be shown without an owner and with
//! a duration counted from that change. A seeded connection is listed with
//! `observed_start: false`, keeps the owner /proc gave it, and gets no
//! duration when it closes (its start is unknown).

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::event::{ConnEvent, TCP_STATES};
use crate::sys::procfs::ExistingConn;

/// Open connections tracked at most (the kernel tracer's own socket map has
/// this many entries); beyond it the least recently changed are forgotten.
pub const MAX_OPEN: usize = sluice_abi::trace::SOCKS_ENTRIES as usize;
/// Closed connections kept for `sluice conns`.
pub const MAX_CLOSED: usize = 4096;
/// State changes kept per connection (the latest ones).
pub const MAX_TRANSITIONS: usize = 16;

/// One state change of a connection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    pub time: String,
    pub state: String,
}

/// One TCP connection, open or recently closed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Conn {
    /// When it started, or, if `observed_start` is false, when sluice first
    /// saw it.
    pub time: String,
    pub comm: String,
    pub pid: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The current (or last) TCP state.
    pub state: String,
    /// out: a local process connected; in: a local listener accepted.
    pub direction: String,
    pub netns: u32,
    pub open: bool,
    /// False for a connection that existed before the tracer attached.
    pub observed_start: bool,
    /// State changes seen, oldest first (the last 16).
    pub transitions: Vec<Transition>,
    /// The container of the local process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container at the other end, when it is one on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_container: Option<String>,
    /// Closed connections seen from their start: how long they lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Kernel socket address (the table's key); 0 for a connection not yet
    /// reported by the tracer. A kernel pointer: never shown.
    #[serde(skip)]
    pub sock: u64,
    /// Table order: a counter bumped on every change.
    #[serde(skip)]
    touched: u64,
    /// Kernel time of the CLOSE (0 while open).
    #[serde(skip)]
    closed_ns: u64,
}

/// (netns, local address and port, remote address and port).
type Tuple = (u32, IpAddr, u16, IpAddr, u16);

/// Open and recently closed connections.
#[derive(Default)]
pub struct ConnTable {
    open: HashMap<u64, Conn>,
    /// Found in /proc, not yet reported by the tracer.
    seeded: HashMap<Tuple, Conn>,
    closed: VecDeque<Conn>,
    tick: u64,
    /// Open connections forgotten because the table was full.
    pub evicted: u64,
    /// The owner of each connection seen (open, or among the closed ones
    /// kept), by (local, remote) address: L7 records name their processes
    /// with it.
    owners: HashMap<(SocketAddr, SocketAddr), (u32, String)>,
    /// Events stamped before this kernel time come from an earlier tracer
    /// (replayed from the pinned ring after a restart, or read after the
    /// tracer was detached): they still reach the stream, but the table
    /// only follows the tracer attached now.
    since: u64,
}

fn tuple(e: &ConnEvent) -> Tuple {
    (e.netns, e.src, e.sport, e.dst, e.dport)
}

impl ConnTable {
    /// Adds the connections of a fresh /proc scan (the tracer was just
    /// attached: it reports every change from now on, and saw none of these
    /// start), except those it has already reported.
    pub fn seed(&mut self, found: &[ExistingConn], now: &str, attached_ns: u64) {
        self.since = attached_ns;
        self.seeded.clear();
        // Already reported, or closed between the scan and now.
        let reported: std::collections::HashSet<Tuple> = self
            .open
            .values()
            .chain(self.closed.iter().filter(|c| c.closed_ns >= attached_ns))
            .map(|c| (c.netns, c.src, c.sport, c.dst, c.dport))
            .collect();
        for c in found {
            if reported.contains(&(c.netns, c.src, c.sport, c.dst, c.dport)) {
                continue;
            }
            let state = TCP_STATES
                .get(c.state as usize)
                .copied()
                .unwrap_or("UNKNOWN")
                .to_string();
            self.tick += 1;
            let conn = Conn {
                time: now.to_string(),
                comm: c.comm.clone(),
                pid: c.pid,
                src: c.src,
                sport: c.sport,
                dst: c.dst,
                dport: c.dport,
                state: state.clone(),
                direction: if c.inbound { "in" } else { "out" }.into(),
                netns: c.netns,
                open: true,
                observed_start: false,
                container: None,
                peer_container: None,
                transitions: vec![Transition {
                    time: now.to_string(),
                    state,
                }],
                duration_ms: None,
                sock: 0,
                touched: self.tick,
                closed_ns: 0,
            };
            self.seeded.insert((c.netns, c.src, c.sport, c.dst, c.dport), conn);
        }
        self.bound();
    }

    /// Records one state change and completes the event from what the table
    /// knows: a connection whose start the tracer did not see gets the owner
    /// /proc gave it, and never a duration (the kernel's would count from
    /// the first change it saw).
    pub fn observe(&mut self, e: &mut ConnEvent) {
        let unseen_start = e.direction == "unknown";
        if unseen_start {
            e.duration_ms = None;
        }
        if e.ts_ns < self.since {
            return;
        }
        // The tracer reports this connection now: a copy from /proc (the
        // scan can see a connection the tracer also saw start) goes. Before
        // its port is chosen (SYN_SENT) a socket has no tuple yet.
        let seeded = if e.sport != 0 {
            self.seeded.remove(&tuple(e))
        } else {
            None
        };
        // The first change of a new socket, or a seen start with another
        // owner: the address was reused after a CLOSE lost to a full ring,
        // and the stale entry is replaced.
        let starts =
            (e.old_state == "CLOSE" && e.state == "SYN_SENT") || (e.old_state == "LISTEN" && e.state == "SYN_RECV");
        let reused = |c: &Conn| !unseen_start && c.observed_start && (c.pid != e.pid || c.direction != e.direction);
        if starts || self.open.get(&e.sock).is_some_and(reused) {
            self.open.remove(&e.sock);
        }
        self.tick += 1;
        let tick = self.tick;
        let conn = match self.open.get_mut(&e.sock) {
            Some(c) => c,
            None => {
                let seeded = if unseen_start { seeded } else { None };
                let c = match seeded {
                    Some(mut c) => {
                        c.sock = e.sock;
                        c
                    }
                    None => Conn {
                        time: e.time.clone(),
                        comm: e.comm.clone(),
                        pid: e.pid,
                        src: e.src,
                        sport: e.sport,
                        dst: e.dst,
                        dport: e.dport,
                        state: e.state.clone(),
                        direction: e.direction.clone(),
                        netns: e.netns,
                        open: true,
                        observed_start: !unseen_start,
                        transitions: Vec::new(),
                        container: None,
                        peer_container: None,
                        duration_ms: None,
                        sock: e.sock,
                        touched: tick,
                        closed_ns: 0,
                    },
                };
                self.open.entry(e.sock).or_insert(c)
            }
        };
        if unseen_start && conn.pid != 0 && e.pid == 0 {
            e.pid = conn.pid;
            e.comm = conn.comm.clone();
            e.direction = conn.direction.clone();
        }
        // SYN_SENT has no source port yet; later changes do.
        (conn.src, conn.sport) = (e.src, e.sport);
        conn.state = e.state.clone();
        conn.touched = tick;
        if conn.transitions.len() == MAX_TRANSITIONS {
            conn.transitions.remove(0);
        }
        conn.transitions.push(Transition {
            time: e.time.clone(),
            state: e.state.clone(),
        });
        if e.state == "CLOSE" {
            let mut c = self.open.remove(&e.sock).expect("just looked up");
            c.open = false;
            c.closed_ns = e.ts_ns;
            c.duration_ms = e.duration_ms;
            if self.closed.len() == MAX_CLOSED {
                self.closed.pop_front();
            }
            self.closed.push_back(c);
        }
        self.bound();
    }

    /// Completes a connection with its containers (named by the hub after
    /// [`ConnTable::observe`] gave the event its owner).
    pub fn name(&mut self, e: &ConnEvent) {
        let key = (SocketAddr::new(e.src, e.sport), SocketAddr::new(e.dst, e.dport));
        if e.pid != 0 && e.sport != 0 && self.owners.len() < 2 * (MAX_OPEN + MAX_CLOSED) {
            self.owners.insert(key, (e.pid, e.comm.clone()));
        }
        let c = match self.open.get_mut(&e.sock) {
            Some(c) => c,
            None => match self.closed.back_mut().filter(|c| c.sock == e.sock) {
                Some(c) => c,
                None => return,
            },
        };
        if e.container.is_some() {
            c.container.clone_from(&e.container);
        }
        if e.peer_container.is_some() {
            c.peer_container.clone_from(&e.peer_container);
        }
    }

    /// The process that owns the connection from `local` to `remote`.
    pub fn owner(&self, local: (IpAddr, u16), remote: (IpAddr, u16)) -> Option<(u32, String)> {
        self.owners
            .get(&(SocketAddr::new(local.0, local.1), SocketAddr::new(remote.0, remote.1)))
            .cloned()
    }

    /// The tracer was detached: open connections can no longer be followed
    /// and are forgotten (closed ones are kept).
    pub fn forget_open(&mut self, now_ns: u64) {
        self.open.clear();
        self.seeded.clear();
        // What the detached tracer left in the ring is stale; a tracer
        // attached later stamps its events after now.
        self.since = now_ns;
    }

    /// Keeps the open set within MAX_OPEN (only reached when CLOSE events
    /// were lost): drops the least recently changed eighth.
    fn bound(&mut self) {
        let n = self.open.len() + self.seeded.len();
        if n <= MAX_OPEN {
            return;
        }
        let mut ticks: Vec<u64> = self
            .open
            .values()
            .chain(self.seeded.values())
            .map(|c| c.touched)
            .collect();
        ticks.sort_unstable();
        let cut = ticks[n - MAX_OPEN + MAX_OPEN / 8 - 1];
        let before = n;
        self.open.retain(|_, c| c.touched > cut);
        self.seeded.retain(|_, c| c.touched > cut);
        self.evicted += (before - self.open.len() - self.seeded.len()) as u64;
    }

    /// Open connections (oldest first), then closed ones (oldest first).
    pub fn list(&self) -> Vec<Conn> {
        let mut open: Vec<&Conn> = self.open.values().chain(self.seeded.values()).collect();
        open.sort_by(|a, b| (&a.time, a.touched).cmp(&(&b.time, b.touched)));
        open.into_iter().chain(self.closed.iter()).cloned().collect()
    }

    /// Open connections now.
    pub fn open_count(&self) -> usize {
        self.open.len() + self.seeded.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sock: u64, old: &str, new: &str, dir: &str, pid: u32, sport: u16, t: &str) -> ConnEvent {
        ConnEvent {
            time: t.into(),
            comm: if pid == 0 { String::new() } else { "client".into() },
            pid,
            src: "198.18.60.2".parse().unwrap(),
            sport,
            dst: "198.18.60.3".parse().unwrap(),
            dport: 80,
            state: new.into(),
            old_state: old.into(),
            direction: dir.into(),
            netns: 7,
            duration_ms: (new == "CLOSE").then_some(1500.0),
            container: None,
            peer_container: None,
            sock,
            ts_ns: 100,
        }
    }

    #[test]
    fn a_connection_seen_from_its_start_has_its_transitions_and_duration() {
        let mut t = ConnTable::default();
        // connect(): no source port yet.
        let mut e = ev(1, "CLOSE", "SYN_SENT", "out", 42, 0, "t1");
        t.observe(&mut e);
        t.observe(&mut ev(1, "SYN_SENT", "ESTABLISHED", "out", 42, 5000, "t2"));
        let l = t.list();
        assert_eq!(l.len(), 1);
        assert!(l[0].open && l[0].observed_start);
        assert_eq!(
            (l[0].time.as_str(), l[0].sport, l[0].state.as_str()),
            ("t1", 5000, "ESTABLISHED")
        );
        let mut close = ev(1, "ESTABLISHED", "CLOSE", "out", 42, 5000, "t3");
        t.observe(&mut close);
        assert_eq!(close.duration_ms, Some(1500.0));
        let l = t.list();
        assert!(!l[0].open);
        assert_eq!(l[0].duration_ms, Some(1500.0));
        let states: Vec<_> = l[0].transitions.iter().map(|x| x.state.as_str()).collect();
        assert_eq!(states, ["SYN_SENT", "ESTABLISHED", "CLOSE"]);
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn a_connection_older_than_the_tracer_keeps_its_proc_owner_and_gets_no_duration() {
        let mut t = ConnTable::default();
        let existing = ExistingConn {
            netns: 7,
            src: "198.18.60.2".parse().unwrap(),
            sport: 5000,
            dst: "198.18.60.3".parse().unwrap(),
            dport: 80,
            state: 1,
            inbound: false,
            pid: 99,
            comm: "old-client".into(),
        };
        t.seed(std::slice::from_ref(&existing), "t0", 50);
        let l = t.list();
        assert_eq!(
            (l.len(), l[0].state.as_str(), l[0].observed_start, l[0].sock),
            (1, "ESTABLISHED", false, 0)
        );
        // The kernel never saw it start: no owner, direction unknown, and a
        // duration counted from its first sighting.
        let mut e = ev(9, "ESTABLISHED", "FIN_WAIT1", "unknown", 0, 5000, "t1");
        t.observe(&mut e);
        assert_eq!(
            (e.pid, e.comm.as_str(), e.direction.as_str()),
            (99, "old-client", "out")
        );
        let mut close = ev(9, "FIN_WAIT1", "CLOSE", "unknown", 0, 5000, "t2");
        t.observe(&mut close);
        assert_eq!((close.pid, close.duration_ms), (99, None));
        let l = t.list();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].open, l[0].duration_ms, l[0].pid, l[0].sock), (false, None, 99, 9));
        assert_eq!(l[0].transitions.len(), 3);
        // A connection nobody knows stays unattributed, without duration.
        let mut stray = ev(10, "ESTABLISHED", "CLOSE", "unknown", 0, 6000, "t3");
        t.observe(&mut stray);
        assert_eq!((stray.pid, stray.duration_ms), (0, None));
    }

    #[test]
    fn a_reused_socket_address_starts_a_new_connection() {
        let mut t = ConnTable::default();
        t.observe(&mut ev(1, "CLOSE", "SYN_SENT", "out", 42, 0, "t1"));
        t.observe(&mut ev(1, "SYN_SENT", "ESTABLISHED", "out", 42, 5000, "t2"));
        // Its CLOSE was lost; the kernel reuses the socket.
        t.observe(&mut ev(1, "CLOSE", "SYN_SENT", "out", 43, 0, "t3"));
        let l = t.list();
        assert_eq!(
            (l.len(), l[0].pid, l[0].time.as_str(), l[0].transitions.len()),
            (1, 43, "t3", 1)
        );
        // Its start was lost too, but a later change names another owner.
        t.observe(&mut ev(1, "ESTABLISHED", "FIN_WAIT1", "in", 44, 80, "t4"));
        let l = t.list();
        assert_eq!((l.len(), l[0].pid, l[0].time.as_str()), (1, 44, "t4"));
    }

    #[test]
    fn a_connection_both_scanned_and_reported_is_listed_once_and_closes() {
        let mut t = ConnTable::default();
        let scanned = |sport, state| ExistingConn {
            netns: 7,
            src: "198.18.60.2".parse().unwrap(),
            sport,
            dst: "198.18.60.3".parse().unwrap(),
            dport: 80,
            state,
            inbound: false,
            pid: 42,
            comm: "client".into(),
        };
        // Started between the tracer's attach and the scan: the scan has it
        // (port 5000), and so will the tracer's events (read after the seed).
        // Another one closed between the scan and the seed.
        t.observe(&mut ev(2, "CLOSE", "SYN_SENT", "out", 42, 0, "t0"));
        t.observe(&mut ev(2, "SYN_SENT", "CLOSE", "out", 42, 6000, "t0"));
        t.seed(&[scanned(5000, 2), scanned(6000, 1)], "t1", 50);
        assert_eq!(t.open_count(), 1, "the closed one is not brought back");
        t.observe(&mut ev(1, "CLOSE", "SYN_SENT", "out", 42, 0, "t2"));
        assert_eq!(t.open_count(), 2, "no port yet: cannot be matched");
        t.observe(&mut ev(1, "SYN_SENT", "ESTABLISHED", "out", 42, 5000, "t3"));
        assert_eq!(t.open_count(), 1, "the scanned copy is superseded");
        t.observe(&mut ev(1, "ESTABLISHED", "CLOSE", "out", 42, 5000, "t4"));
        assert_eq!(t.open_count(), 0);
        let c = t.list().into_iter().find(|c| c.sport == 5000).unwrap();
        assert!(c.observed_start && c.duration_ms.is_some(), "{c:?}");
    }

    #[test]
    fn events_from_an_earlier_tracer_never_reach_the_table() {
        let mut t = ConnTable::default();
        t.seed(&[], "t0", 1000);
        // ts_ns 100: replayed from the pinned ring after a restart.
        let mut old = ev(1, "SYN_SENT", "ESTABLISHED", "out", 42, 5000, "t");
        t.observe(&mut old);
        assert_eq!(t.list().len(), 0);
        let mut new = ev(2, "CLOSE", "SYN_SENT", "out", 42, 0, "t");
        new.ts_ns = 2000;
        t.observe(&mut new);
        assert_eq!(t.open_count(), 1);
        t.forget_open(3000);
        new.ts_ns = 2500;
        t.observe(&mut new);
        assert_eq!(t.open_count(), 0, "read after the tracer was detached");
        // A tracer attached again reports at once, before its seed.
        new.ts_ns = 3500;
        t.observe(&mut new);
        assert_eq!(t.open_count(), 1);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = ConnTable::default();
        for i in 0..(MAX_OPEN as u64 + 100) {
            t.observe(&mut ev(i + 1, "CLOSE", "SYN_SENT", "out", 1, 0, "t"));
        }
        assert!(t.open_count() <= MAX_OPEN);
        assert_eq!(t.open_count() as u64 + t.evicted, MAX_OPEN as u64 + 100);
        // The newest survive.
        assert!(t.open.contains_key(&(MAX_OPEN as u64 + 100)));
        for i in 0..(MAX_CLOSED as u64 + 10) {
            t.observe(&mut ev(1_000_000 + i, "CLOSE", "SYN_SENT", "out", 1, 0, "t"));
            t.observe(&mut ev(1_000_000 + i, "SYN_SENT", "CLOSE", "out", 1, 0, "t"));
        }
        assert_eq!(t.list().iter().filter(|c| !c.open).count(), MAX_CLOSED);
        let mut long = ev(5, "CLOSE", "SYN_SENT", "out", 1, 0, "t");
        for _ in 0..40 {
            t.observe(&mut long);
            long.old_state = "ESTABLISHED".into();
        }
        let c = t.list().into_iter().find(|c| c.sock == 5).unwrap();
        assert_eq!(c.transitions.len(), MAX_TRANSITIONS);
    }
}
