//! The L7 audit pipeline: turns the kernel's payload captures (`EV_L7`
//! records from `sluice_tc`) into paired request/response records.
//!
//! [`Assembler`] keys connections by (client, server) and puts each
//! direction's segments back in TCP sequence order: duplicates and
//! overlaps are trimmed, early segments wait (briefly, and within a byte
//! bound) for the hole before them, and bytes that never come (lost
//! segments, or the per-packet capture cap) are reported to the parser as a
//! gap, which marks what was in flight as partial. The protocol parsers and
//! the pairing live in [`crate::l7`]. Records go to the event hub, to the
//! metrics and, through a bounded queue whose overflow is counted, to
//! [`AuditStore`]: SQLite with retention by age and by row count.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use sluice_abi::{ev, l7 as abi, EvL7};

use crate::l7::{Conn, Dir, Exchange, Proto, Summary};

/// One capture as the kernel sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Proto,
    pub dir: Dir,
    pub seq: u32,
    /// Payload bytes the packet carried; `data` may hold fewer (the cap).
    pub payload_len: u32,
    pub data: Vec<u8>,
}

fn ip(family: u8, b: [u8; 16]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

/// Decodes an `EV_L7` record; None if it is not one or is malformed.
pub fn decode_segment(b: &[u8]) -> Option<Segment> {
    if b.len() < abi::HDR {
        return None;
    }
    // SAFETY: length checked; EvL7 is plain integers, valid for any bit
    // pattern, and read_unaligned needs no alignment.
    let h: EvL7 = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<EvL7>()) };
    let cap = h.cap_len as usize;
    if h.h.kind != ev::L7 || h.h.size as usize != abi::HDR + cap || b.len() < abi::HDR + cap || cap > abi::CAP {
        return None;
    }
    if cap as u32 > h.payload_len {
        return None;
    }
    let proto = match h.proto {
        abi::HTTP => Proto::Http,
        abi::REDIS => Proto::Redis,
        abi::MYSQL => Proto::Mysql,
        _ => return None,
    };
    let dir = match h.dir {
        abi::TO_SERVER => Dir::ToServer,
        abi::TO_CLIENT => Dir::ToClient,
        _ => return None,
    };
    Some(Segment {
        ts_ns: h.h.ts_ns,
        ifindex: h.ifindex,
        src: SocketAddr::new(ip(h.family, h.saddr), h.sport),
        dst: SocketAddr::new(ip(h.family, h.daddr), h.dport),
        proto,
        dir,
        seq: h.seq,
        payload_len: h.payload_len,
        data: b[abi::HDR..abi::HDR + cap].to_vec(),
    })
}

/// A paired exchange with its connection, as stored, streamed and listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L7Record {
    /// Time of the request (or of the response when no request was seen).
    pub time: String,
    /// The same, in ns since the Unix epoch (for `since` queries).
    pub ts_ns: u64,
    pub proto: Proto,
    pub interface: String,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Summary>,
    /// A one-word outcome: the HTTP status, `ok`/`error` for Redis,
    /// `ok`/`result_set`/`err` for MySQL, `no_response`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// Some bytes were missing or unclear: the fields are best effort.
    pub partial: bool,
}

/// The outcome word and error code of an exchange.
pub fn outcome(e: &Exchange) -> (String, Option<u16>) {
    match &e.response {
        None => ("no_response".into(), None),
        Some(Summary::HttpResponse { status, .. }) => (status.to_string(), None),
        Some(Summary::RedisReply { kind, .. }) => (if kind == "error" { "error" } else { "ok" }.into(), None),
        Some(Summary::MysqlReply { kind, error_code, .. }) => (kind.clone(), *error_code),
        Some(_) => ("unknown".into(), None),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    client: SocketAddr,
    server: SocketAddr,
}

/// Most bytes waiting for a hole to fill, per direction.
const MAX_PENDING: usize = 256 * 1024;
/// How long an early segment waits for the hole before it.
const HOLE_WAIT_NS: u64 = 200_000_000;
/// A connection with no capture for this long is flushed and forgotten.
pub const IDLE_NS: u64 = 30_000_000_000;
/// Most connections tracked at once; the least recently seen goes first.
pub const MAX_CONNS: usize = 65536;

#[derive(Default)]
struct Stream {
    next: Option<u32>,
    /// Early segments by sequence: (arrival ts, payload_len, bytes).
    pending: BTreeMap<u32, (u64, u32, Vec<u8>)>,
    pending_bytes: usize,
}

struct ConnState {
    conn: Conn,
    streams: [Stream; 2],
    last_ns: u64,
    ifindex: u32,
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::ToServer => 0,
        Dir::ToClient => 1,
    }
}

/// Hands `data` (the first bytes of `payload_len`) to the parser, reporting
/// the uncaptured rest as a gap.
fn deliver(conn: &mut Conn, dir: Dir, ts: u64, payload_len: u32, data: &[u8], out: &mut Vec<Exchange>) {
    if !data.is_empty() {
        out.extend(conn.feed(dir, ts, data));
    }
    let missing = payload_len as u64 - data.len() as u64;
    if missing > 0 {
        conn.gap(dir, missing);
    }
}

impl ConnState {
    fn segment(&mut self, s: Segment, out: &mut Vec<Exchange>) {
        let dir = s.dir;
        let st = &mut self.streams[idx(dir)];
        let next = *st.next.get_or_insert(s.seq);
        let rel = s.seq.wrapping_sub(next) as i32;
        if rel > 0 {
            // Early: wait for the hole, within bounds.
            st.pending_bytes += s.data.len();
            if let Some(old) = st.pending.insert(s.seq, (s.ts_ns, s.payload_len, s.data)) {
                st.pending_bytes -= old.2.len(); // a retransmission replaced it
            }
            if st.pending_bytes > MAX_PENDING || st.pending.len() > 256 {
                self.skip_hole(dir, out);
            }
            return;
        }
        let skip = next.wrapping_sub(s.seq); // bytes already delivered (retransmission)
        if skip >= s.payload_len {
            return; // a pure duplicate
        }
        let data = s.data.get(skip as usize..).unwrap_or(&[]);
        deliver(&mut self.conn, dir, s.ts_ns, s.payload_len - skip, data, out);
        self.streams[idx(dir)].next = Some(s.seq.wrapping_add(s.payload_len));
        self.drain(dir, out);
    }

    /// Delivers waiting segments that are now in order.
    fn drain(&mut self, dir: Dir, out: &mut Vec<Exchange>) {
        loop {
            let st = &mut self.streams[idx(dir)];
            let Some(next) = st.next else { return };
            let Some(seq) = st.pending.keys().copied().find(|s| s.wrapping_sub(next) as i32 <= 0) else {
                return;
            };
            let (ts, plen, data) = st.pending.remove(&seq).expect("key just found");
            st.pending_bytes -= data.len();
            let skip = next.wrapping_sub(seq);
            if skip >= plen {
                continue;
            }
            let d = data.get(skip as usize..).unwrap_or(&[]);
            deliver(&mut self.conn, dir, ts, plen - skip, d, out);
            self.streams[idx(dir)].next = Some(seq.wrapping_add(plen));
        }
    }

    /// Gives up on the hole before the earliest waiting segment.
    fn skip_hole(&mut self, dir: Dir, out: &mut Vec<Exchange>) {
        let st = &mut self.streams[idx(dir)];
        let (Some(next), Some(first)) = (
            st.next,
            st.pending
                .keys()
                .copied()
                .min_by_key(|s| s.wrapping_sub(st.next.unwrap_or(0))),
        ) else {
            return;
        };
        let hole = first.wrapping_sub(next);
        st.next = Some(first);
        self.conn.gap(dir, hole as u64);
        self.drain(dir, out);
    }

    fn oldest_pending(&self) -> Option<u64> {
        self.streams.iter().flat_map(|s| s.pending.values().map(|p| p.0)).min()
    }
}

/// Connection table and reassembly; owned by the ring reader.
#[derive(Default)]
pub struct Assembler {
    conns: HashMap<ConnKey, ConnState>,
}

/// An exchange with its connection: what becomes an [`L7Record`].
#[derive(Clone, Debug)]
pub struct Done {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub ifindex: u32,
    pub exchange: Exchange,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn segment(&mut self, s: Segment) -> Vec<Done> {
        let key = match s.dir {
            Dir::ToServer => ConnKey {
                client: s.src,
                server: s.dst,
            },
            Dir::ToClient => ConnKey {
                client: s.dst,
                server: s.src,
            },
        };
        let mut done = Vec::new();
        if !self.conns.contains_key(&key) && self.conns.len() >= MAX_CONNS {
            // Full: forget the least recently seen sixteenth in one pass, so
            // a flood of new connections costs one scan per 4096, not each.
            let mut by_age: Vec<(u64, ConnKey)> = self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
            let n = MAX_CONNS / 16;
            by_age.select_nth_unstable_by_key(n, |(t, _)| *t);
            for (_, k) in by_age.into_iter().take(n) {
                done.extend(self.flush(k));
            }
        }
        let st = self.conns.entry(key).or_insert_with(|| ConnState {
            conn: Conn::new(s.proto),
            streams: Default::default(),
            last_ns: s.ts_ns,
            ifindex: s.ifindex,
        });
        st.last_ns = st.last_ns.max(s.ts_ns);
        if s.dir == Dir::ToServer {
            st.ifindex = s.ifindex;
        }
        let mut ex = Vec::new();
        st.segment(s, &mut ex);
        let ifindex = st.ifindex;
        done.extend(ex.into_iter().map(|exchange| Done {
            client: key.client,
            server: key.server,
            ifindex,
            exchange,
        }));
        done
    }

    fn flush(&mut self, key: ConnKey) -> Vec<Done> {
        let Some(mut st) = self.conns.remove(&key) else {
            return Vec::new();
        };
        let mut ex = Vec::new();
        for d in [Dir::ToServer, Dir::ToClient] {
            if !st.streams[idx(d)].pending.is_empty() {
                st.skip_hole(d, &mut ex);
            }
        }
        ex.extend(st.conn.flush());
        ex.into_iter()
            .map(|exchange| Done {
                client: key.client,
                server: key.server,
                ifindex: st.ifindex,
                exchange,
            })
            .collect()
    }

    /// Housekeeping at `now_ns` (monotonic): holes waited on too long are
    /// skipped, idle connections flushed.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Done> {
        let mut done = Vec::new();
        let idle: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ns) > IDLE_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            done.extend(self.flush(k));
        }
        for (k, st) in self.conns.iter_mut() {
            if st
                .oldest_pending()
                .is_some_and(|t| now_ns.saturating_sub(t) > HOLE_WAIT_NS)
            {
                let mut ex = Vec::new();
                for d in [Dir::ToServer, Dir::ToClient] {
                    if !st.streams[idx(d)].pending.is_empty() {
                        st.skip_hole(d, &mut ex);
                    }
                }
                done.extend(ex.into_iter().map(|exchange| Done {
                    client: k.client,
                    server: k.server,
                    ifindex: st.ifindex,
                    exchange,
                }));
            }
        }
        done
    }
}

type Labels = Vec<(String, String)>;
/// Histograms need a constructor for their buckets.
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// L7 metrics, shared with `/metrics` (prometheus-client families are
/// handles: the scrape registers clones of these).
#[derive(Clone)]
pub struct L7Metrics {
    /// By proto and status.
    pub requests: Family<Labels, Counter>,
    /// Request-to-response latency in seconds, by proto.
    pub latency: HistogramFamily,
    /// Captures received from the kernel.
    pub segments: Arc<AtomicU64>,
    /// Records the store could not keep up with (queue full).
    pub store_dropped: Arc<AtomicU64>,
    /// Records written to the store (or failed to write: logged).
    pub stored: Arc<AtomicU64>,
    /// Records queued for the store.
    pub queued: Arc<AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~6.5 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 18,
    ))
}

impl Default for L7Metrics {
    fn default() -> Self {
        L7Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            segments: Arc::default(),
            store_dropped: Arc::default(),
            stored: Arc::default(),
            queued: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("audit database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Retention of the audit store.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_records: u64,
}

/// The L7 audit log in SQLite (`l7.db` in the state directory). Writes go
/// through one writer thread fed by a bounded queue; reads open their own
/// connection (WAL mode lets them run alongside the writer).
pub struct AuditStore {
    path: std::path::PathBuf,
    tx: mpsc::SyncSender<L7Record>,
    pub metrics: L7Metrics,
    reader: Mutex<Connection>,
}

const AUDIT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS l7 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns INTEGER NOT NULL,
    proto TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS l7_ts ON l7 (ts_ns);
";

/// Capacity of the queue between the ring reader and the writer thread.
pub const STORE_QUEUE: usize = 65536;

fn open_db(path: &Path) -> Result<Connection, AuditError> {
    let c = Connection::open(path).map_err(|source| AuditError::Open {
        path: path.display().to_string(),
        source,
    })?;
    c.busy_timeout(Duration::from_secs(5))?;
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    c.execute_batch(AUDIT_SCHEMA)?;
    Ok(c)
}

pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl AuditStore {
    /// Opens (creating) `dir/l7.db` and starts the writer thread.
    pub fn open(dir: &Path, retention: Retention) -> Result<Arc<Self>, AuditError> {
        let path = dir.join("l7.db");
        let writer = open_db(&path)?;
        let reader = open_db(&path)?;
        let (tx, rx) = mpsc::sync_channel::<L7Record>(STORE_QUEUE);
        let metrics = L7Metrics::default();
        let stored = metrics.stored.clone();
        std::thread::Builder::new()
            .name("sluice-l7-store".into())
            .spawn(move || write_loop(writer, rx, retention, stored))
            .expect("spawning the audit writer");
        Ok(Arc::new(AuditStore {
            path,
            tx,
            metrics,
            reader: Mutex::new(reader),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; a full queue drops it and counts the drop.
    pub fn push(&self, r: L7Record) {
        match self.tx.try_send(r) {
            Ok(()) => self.metrics.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.metrics.store_dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Waits (up to `timeout`) until every queued record is written: the
    /// daemon's shutdown, so no record paired before it is lost.
    pub fn flush(&self, timeout: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while self.metrics.stored.load(Ordering::Relaxed) < self.metrics.queued.load(Ordering::Relaxed) {
            if t0.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Records, oldest first: the newest `limit` matching the filters.
    pub fn query(
        &self,
        proto: Option<Proto>,
        since_ns: Option<u64>,
        limit: usize,
    ) -> Result<Vec<L7Record>, AuditError> {
        let c = self.reader.lock().unwrap();
        let mut stmt = c.prepare_cached(
            "SELECT record FROM l7 WHERE (?1 IS NULL OR proto = ?1) AND ts_ns >= ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![proto.map(|p| p.as_str()), since_ns.unwrap_or(0) as i64, limit as i64],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for row in rows {
            match serde_json::from_str(&row?) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable audit record"),
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, AuditError> {
        let c = self.reader.lock().unwrap();
        Ok(c.query_row("SELECT count(*) FROM l7", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

fn write_loop(mut c: Connection, rx: mpsc::Receiver<L7Record>, ret: Retention, stored: Arc<AtomicU64>) {
    let mut since_prune = 0u64;
    let mut last_prune = std::time::Instant::now();
    loop {
        // Retention also runs on a quiet host: at least once a minute.
        let first = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = prune(&c, ret) {
                    tracing::warn!(error = %e, "pruning the audit log");
                }
                last_prune = std::time::Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Batch whatever is queued into one transaction.
        let mut batch = vec![first];
        while batch.len() < 2048 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let res = (|| -> Result<(), rusqlite::Error> {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("INSERT INTO l7 (ts_ns, proto, record) VALUES (?1, ?2, ?3)")?;
                for r in &batch {
                    let json = serde_json::to_string(r).expect("a record serialises");
                    stmt.execute(params![r.ts_ns as i64, r.proto.as_str(), json])?;
                }
            }
            tx.commit()
        })();
        match res {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, records = n, "writing the audit log"),
        }
        stored.fetch_add(n, Ordering::Relaxed);
        since_prune += n;
        if since_prune >= 1000 || last_prune.elapsed() > Duration::from_secs(60) {
            since_prune = 0;
            last_prune = std::time::Instant::now();
            if let Err(e) = prune(&c, ret) {
                tracing::warn!(error = %e, "pruning the audit log");
            }
        }
    }
}

/// Applies the retention: records older than max_age, then the oldest
/// beyond max_records.
fn prune(c: &Connection, ret: Retention) -> Result<(), rusqlite::Error> {
    let cutoff = now_unix_ns().saturating_sub(ret.max_age.as_nanos() as u64);
    c.execute("DELETE FROM l7 WHERE ts_ns < ?1", params![cutoff as i64])?;
    c.execute(
        "DELETE FROM l7 WHERE id <= (SELECT max(id) FROM l7) - ?1",
        params![ret.max_records as i64],
    )?;
    Ok(())
}

/// Prunes now (tests, and the daemon's start).
pub fn prune_now(store: &AuditStore, ret: Retention) -> Result<(), AuditError> {
    let c = store.reader.lock().unwrap();
    Ok(prune(&c, ret)?)
}

/// The L7 stage of the ring reader: reassembly, records, store, metrics.
pub struct Audit {
    pub assembler: Assembler,
    pub store: Option<Arc<AuditStore>>,
    pub metrics: L7Metrics,
}

impl Audit {
    pub fn new(store: Option<Arc<AuditStore>>) -> Self {
        let metrics = store.as_ref().map(|s| s.metrics.clone()).unwrap_or_default();
        Audit {
            assembler: Assembler::new(),
            store,
            metrics,
        }
    }

    /// Turns a finished exchange into a record, counts and stores it.
    pub fn record(&self, d: Done, clock: &crate::events::Clock, interface: String) -> L7Record {
        let e = &d.exchange;
        let ts = e.req_ts_ns.or(e.resp_ts_ns).unwrap_or(0);
        let (status, error_code) = outcome(e);
        let latency = e.latency_ns();
        let r = L7Record {
            time: clock.wall(ts),
            ts_ns: clock.unix_ns(ts),
            proto: e.proto,
            interface,
            client: d.client.ip(),
            client_port: d.client.port(),
            server: d.server.ip(),
            server_port: d.server.port(),
            request: e.request.clone(),
            response: e.response.clone(),
            status: status.clone(),
            error_code,
            latency_ms: latency.map(|ns| ns as f64 / 1e6),
            req_bytes: e.req_bytes,
            resp_bytes: e.resp_bytes,
            partial: e.partial,
        };
        let proto = e.proto.as_str().to_string();
        self.metrics
            .requests
            .get_or_create(&vec![("proto".into(), proto.clone()), ("status".into(), status)])
            .inc();
        if let Some(ns) = latency {
            self.metrics
                .latency
                .get_or_create(&vec![("proto".into(), proto)])
                .observe(ns as f64 / 1e9);
        }
        if let Some(s) = &self.store {
            s.push(r.clone());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(dir: Dir, seq: u32, data: &[u8], payload_len: u32, ts: u64) -> Segment {
        let (c, s): (SocketAddr, SocketAddr) =
            ("198.18.1.2:40000".parse().unwrap(), "198.18.2.2:6379".parse().unwrap());
        let (src, dst) = if dir == Dir::ToServer { (c, s) } else { (s, c) };
        Segment {
            ts_ns: ts,
            ifindex: 1,
            src,
            dst,
            proto: Proto::Redis,
            dir,
            seq,
            payload_len,
            data: data.to_vec(),
        }
    }

    fn cmds(done: &[Done]) -> Vec<(String, bool)> {
        done.iter()
            .map(|d| match &d.exchange.request {
                Some(Summary::RedisCommand { command, key, .. }) => (
                    format!("{command} {}", key.clone().unwrap_or_default()),
                    d.exchange.partial,
                ),
                other => (format!("{other:?}"), d.exchange.partial),
            })
            .collect()
    }

    #[test]
    fn in_order_reordered_and_duplicated_segments_pair_up() {
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        let mut a = Assembler::new();
        assert!(a.segment(seg(Dir::ToServer, 1000, get, get.len() as u32, 1)).is_empty());
        let done = a.segment(seg(Dir::ToClient, 5000, b"$1\r\nx\r\n", 7, 2));
        assert_eq!(cmds(&done), vec![("GET a".into(), false)]);
        assert_eq!(done[0].exchange.latency_ns(), Some(1));

        // The second request arrives in two halves, the second half first,
        // and the first half twice.
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n1\r\n";
        let next = 1000 + get.len() as u32;
        let (h1, h2) = set.split_at(10);
        assert!(a
            .segment(seg(Dir::ToServer, next + 10, h2, h2.len() as u32, 3))
            .is_empty());
        assert!(a.segment(seg(Dir::ToServer, next, h1, 10, 4)).is_empty());
        assert!(a.segment(seg(Dir::ToServer, next, h1, 10, 5)).is_empty());
        let done = a.segment(seg(Dir::ToClient, 5007, b"+OK\r\n", 5, 6));
        assert_eq!(cmds(&done), vec![("SET b".into(), false)]);
    }

    #[test]
    fn a_hole_that_never_fills_is_a_gap_after_the_wait() {
        let mut a = Assembler::new();
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        a.segment(seg(Dir::ToServer, 1, get, get.len() as u32, 1));
        // 100 bytes lost, then a new request.
        let next = 1 + get.len() as u32 + 100;
        a.segment(seg(Dir::ToServer, next, get, get.len() as u32, 2));
        assert_eq!(a.tick(2 + HOLE_WAIT_NS / 2).len(), 0, "still waiting for the hole");
        a.tick(2 + HOLE_WAIT_NS + 1);
        let done = a.segment(seg(Dir::ToClient, 1, b"$1\r\nx\r\n$1\r\ny\r\n", 14, 3));
        assert!(!done.is_empty(), "the parser resynced after the gap");
        assert!(done.iter().any(|d| d.exchange.partial), "{:?}", cmds(&done));
    }

    #[test]
    fn capped_captures_are_gaps_and_idle_connections_are_flushed() {
        let mut a = Assembler::new();
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        // The packet carried 1000 bytes, only the first 22 were captured.
        a.segment(seg(Dir::ToServer, 1, get, 1000, 1));
        assert_eq!(a.connections(), 1);
        let done = a.tick(1 + IDLE_NS + 1);
        assert_eq!(a.connections(), 0);
        assert!(
            done.iter().all(|d| d.exchange.partial && d.exchange.response.is_none()),
            "{:?}",
            cmds(&done)
        );
    }

    #[test]
    fn segments_decode_and_bad_records_do_not() {
        let mut h = EvL7 {
            ifindex: 3,
            seq: 77,
            sport: 40000,
            dport: 80,
            family: 4,
            proto: abi::HTTP,
            dir: abi::TO_SERVER,
            payload_len: 10,
            cap_len: 4,
            ..Default::default()
        };
        h.h.kind = ev::L7;
        h.h.size = (abi::HDR + 4) as u16;
        h.saddr[..4].copy_from_slice(&[198, 18, 1, 2]);
        h.daddr[..4].copy_from_slice(&[198, 18, 2, 2]);
        // SAFETY: EvL7 is plain integers.
        let mut b = unsafe { std::slice::from_raw_parts((&h as *const EvL7).cast::<u8>(), abi::HDR) }.to_vec();
        b.extend_from_slice(b"GET ");
        let s = decode_segment(&b).unwrap();
        assert_eq!(s.src, "198.18.1.2:40000".parse().unwrap());
        assert_eq!((s.seq, s.payload_len, s.data.as_slice()), (77, 10, &b"GET "[..]));
        assert!(decode_segment(&b[..abi::HDR + 2]).is_none(), "truncated");
        let mut bad = b.clone();
        bad[29] = 9; // proto (after h, ifindex, seq, ports, family)
        assert!(decode_segment(&bad).is_none());
        assert!(decode_segment(&[0u8; 10]).is_none());
    }

    #[test]
    fn the_store_keeps_queries_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention {
            max_age: Duration::from_secs(3600),
            max_records: 5,
        };
        let s = AuditStore::open(dir.path(), ret).unwrap();
        let now = now_unix_ns();
        for i in 0..8u64 {
            s.push(L7Record {
                time: String::new(),
                ts_ns: now - 1000 + i,
                proto: if i % 2 == 0 { Proto::Http } else { Proto::Redis },
                interface: "x".into(),
                client: "198.18.1.2".parse().unwrap(),
                client_port: 1,
                server: "198.18.2.2".parse().unwrap(),
                server_port: 2,
                request: None,
                response: None,
                status: i.to_string(),
                error_code: None,
                latency_ms: None,
                req_bytes: i,
                resp_bytes: 0,
                partial: false,
            });
        }
        let t0 = std::time::Instant::now();
        while s.metrics.stored.load(Ordering::Relaxed) < 8 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.count().unwrap(), 8);
        let http = s.query(Some(Proto::Http), None, 100).unwrap();
        assert_eq!(http.iter().map(|r| r.req_bytes).collect::<Vec<_>>(), vec![0, 2, 4, 6]);
        assert_eq!(s.query(None, Some(now - 1000 + 6), 100).unwrap().len(), 2);
        assert_eq!(s.query(None, None, 3).unwrap().len(), 3);
        prune_now(&s, ret).unwrap();
        assert_eq!(s.count().unwrap(), 5, "the oldest beyond max_records go");
        let ret = Retention {
            max_age: Duration::from_nanos(1),
            max_records: 5,
        };
        prune_now(&s, ret).unwrap();
        assert_eq!(s.count().unwrap(), 0, "everything is older than 1 ns");
    }
}

#[cfg(test)]
mod writer_speed {
    use super::*;

    #[test]
    #[ignore]
    fn writer_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention {
            max_age: Duration::from_secs(3600),
            max_records: 1_000_000,
        };
        let s = AuditStore::open(dir.path(), ret).unwrap();
        let r = L7Record {
            time: "2026-11-22T06:40:01.123456Z".into(),
            ts_ns: now_unix_ns(),
            proto: Proto::Http,
            interface: "veth-x".into(),
            client: "198.18.1.2".parse().unwrap(),
            client_port: 1,
            server: "198.18.2.2".parse().unwrap(),
            server_port: 80,
            request: Some(Summary::HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                host: Some("x".into()),
                content_length: None,
            }),
            response: Some(Summary::HttpResponse {
                status: 200,
                content_length: Some(12),
            }),
            status: "200".into(),
            error_code: None,
            latency_ms: Some(0.1),
            req_bytes: 40,
            resp_bytes: 80,
            partial: false,
        };
        let t0 = std::time::Instant::now();
        let n = 200_000u64;
        let mut sent = 0;
        while sent < n {
            if s.tx.try_send(r.clone()).is_ok() {
                s.metrics.queued.fetch_add(1, Ordering::Relaxed);
                sent += 1;
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        assert!(s.flush(Duration::from_secs(120)));
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("{n} records in {secs:.2} s: {:.0}/s", n as f64 / secs);
    }
}
