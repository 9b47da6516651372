//! The L7 audit pipeline: turns the kernel's payload captures (`EV_L7`
//! records from `bpf/include/l7_capture.h`) into paired request/response
//! records.
//!
//! [`Assembler`] keys connections by (client, server) as the client sees
//! them, and puts each direction's segments back in TCP sequence order:
//! duplicates and overlaps are trimmed, early segments wait (briefly, and
//! within a byte bound) for the hole before them, and bytes that never come
//! (lost segments, or the per-packet capture cap) are reported to the
//! parser as a gap, which marks what was in flight as partial. A FIN ends
//! its direction once the bytes before it are in (a response delimited by
//! the close is recorded then, not at the idle flush); a RST, or both FINs,
//! end the connection. A forwarded connection's packets carry the kernel's
//! translation ([`Xlat`]): the target's replies count as the service's, so
//! they pair with the requests the client sent to the service, and the
//! record names both. The protocol parsers and
//! the pairing live in [`sluice_proto::l7`]. Records go to the event hub, to
//! the metrics and to the audit log ([`L7Log`] over
//! [`crate::store::audit::AuditStore`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{atomic::AtomicU64, Arc},
};

use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use serde::{Deserialize, Serialize};
use sluice_abi::{ev, l7 as abi, EvL7};

use sluice_proto::l7::{Conn, Dir, Exchange, Proto, Summary};

use crate::store::audit::{AuditError, AuditRow, AuditStore};
use crate::sys::time::Clock;

/// The translation a packet of a forwarded connection goes through (the
/// kernel's forward state when it was captured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xlat {
    /// Client -> service, sent on to this target.
    Dnat { target: SocketAddr },
    /// Target -> client, which sees it come from this service.
    Snat { service: SocketAddr },
}

/// TCP flags of a capture that matter here.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// One capture as the kernel sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub ts_ns: u64,
    pub ifindex: u32,
    /// The packet's addresses, before any translation.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Proto,
    pub dir: Dir,
    pub seq: u32,
    /// Payload bytes the packet carried; `data` may hold fewer (the cap).
    /// 0 only for a FIN or RST.
    pub payload_len: u32,
    pub tcp_flags: u8,
    pub xlat: Option<Xlat>,
    pub data: Vec<u8>,
}

impl Segment {
    /// (client, server) as the client sees its connection, and the real
    /// server behind a forwarded one.
    fn ends(&self) -> (SocketAddr, SocketAddr, Option<SocketAddr>) {
        let (src, target) = match self.xlat {
            None => (self.src, None),
            Some(Xlat::Dnat { target }) => (self.src, Some(target)),
            Some(Xlat::Snat { service }) => (service, Some(self.src)),
        };
        match self.dir {
            Dir::ToServer => (src, self.dst, target),
            Dir::ToClient => (self.dst, src, target),
        }
    }
}

fn ip(family: u8, b: [u8; 16]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

/// Decodes an `EV_L7` record; None if it is not one or is malformed. Reads
/// the previous version's 72-byte header too (no translation), which its
/// programs may still write into the pinned ring.
pub fn decode_segment(b: &[u8]) -> Option<Segment> {
    if b.len() < abi::HDR_V1 {
        return None;
    }
    // The header's length is the record's size less the payload's.
    let mut hdr = [0u8; abi::HDR];
    hdr[..abi::HDR_V1].copy_from_slice(&b[..abi::HDR_V1]);
    // SAFETY: EvL7 is plain integers, valid for any bit pattern (the
    // missing fields of a short header are zero), and read_unaligned needs
    // no alignment.
    let mut h: EvL7 = unsafe { std::ptr::read_unaligned(hdr.as_ptr().cast::<EvL7>()) };
    let cap = h.cap_len as usize;
    let hlen = (h.h.size as usize).checked_sub(cap)?;
    if h.h.kind != ev::L7 || (hlen != abi::HDR && hlen != abi::HDR_V1) || b.len() < hlen + cap || cap > abi::CAP {
        return None;
    }
    if hlen == abi::HDR {
        // SAFETY: as above, with the whole header present.
        h = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<EvL7>()) };
    } else {
        h.flags = 0;
    }
    if cap as u32 > h.payload_len {
        return None;
    }
    if h.payload_len == 0 && h.tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return None;
    }
    let x = SocketAddr::new(ip(h.family, h.xaddr), h.xport);
    let xlat = match h.flags {
        0 => None,
        abi::F_DNAT => Some(Xlat::Dnat { target: x }),
        abi::F_SNAT => Some(Xlat::Snat { service: x }),
        _ => return None,
    };
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
        tcp_flags: h.tcp_flags,
        xlat,
        data: b[hlen..hlen + cap].to_vec(),
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
    /// The server the client dialled (a forward's service address).
    pub server: IpAddr,
    pub server_port: u16,
    /// For a forwarded connection, the target that really answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
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
    /// The client's container, when it is one on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_container: Option<String>,
    /// The server's container (the forward's target, when forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_container: Option<String>,
    /// The client process, when the connection log knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_comm: Option<String>,
    /// The server process (the listener's owner), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_comm: Option<String>,
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
    /// A FIN seen: (sequence number it ends the stream at, arrival ts).
    fin: Option<(u32, u64)>,
    /// The FIN was reached: the parser was told, nothing more comes.
    ended: bool,
}

impl Stream {
    /// Something waits for a hole to fill: early segments or the FIN.
    fn waiting(&self) -> bool {
        !self.pending.is_empty() || self.fin.is_some()
    }
}

struct ConnState {
    conn: Conn,
    streams: [Stream; 2],
    last_ns: u64,
    ifindex: u32,
    /// The real server of a forwarded connection.
    target: Option<SocketAddr>,
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
        if st.ended {
            return; // a retransmission after the FIN
        }
        st.next.get_or_insert(s.seq);
        if s.tcp_flags & TCP_FIN != 0 {
            st.fin = Some((s.seq.wrapping_add(s.payload_len), s.ts_ns));
        }
        if s.payload_len > 0 {
            self.data(s, out);
        }
        self.check_end(dir, out);
    }

    /// Ends the direction once its FIN is reached.
    fn check_end(&mut self, dir: Dir, out: &mut Vec<Exchange>) {
        let st = &mut self.streams[idx(dir)];
        let (Some((fin, _)), Some(next)) = (st.fin, st.next) else {
            return;
        };
        if fin.wrapping_sub(next) as i32 > 0 {
            return; // bytes before the FIN are still missing
        }
        st.fin = None;
        st.ended = true;
        st.pending.clear();
        st.pending_bytes = 0;
        out.extend(self.conn.end(dir));
    }

    fn ended(&self) -> bool {
        self.streams.iter().all(|s| s.ended)
    }

    fn data(&mut self, s: Segment, out: &mut Vec<Exchange>) {
        let dir = s.dir;
        let st = &mut self.streams[idx(dir)];
        let next = st.next.unwrap_or(s.seq);
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

    /// Gives up on the hole before the earliest waiting segment (or the
    /// FIN).
    fn skip_hole(&mut self, dir: Dir, out: &mut Vec<Exchange>) {
        let st = &mut self.streams[idx(dir)];
        let Some(next) = st.next else { return };
        let Some(first) = st
            .pending
            .keys()
            .copied()
            .chain(st.fin.map(|f| f.0))
            .min_by_key(|s| s.wrapping_sub(next))
        else {
            return;
        };
        let hole = first.wrapping_sub(next);
        st.next = Some(first);
        self.conn.gap(dir, hole as u64);
        self.drain(dir, out);
        self.check_end(dir, out);
    }

    fn oldest_pending(&self) -> Option<u64> {
        self.streams
            .iter()
            .flat_map(|s| s.pending.values().map(|p| p.0).chain(s.fin.map(|f| f.1)))
            .min()
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
    /// As the client dialled it.
    pub server: SocketAddr,
    /// The real server of a forwarded connection.
    pub target: Option<SocketAddr>,
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
        let (client, server, target) = s.ends();
        let key = ConnKey { client, server };
        let mut done = Vec::new();
        if !self.conns.contains_key(&key) {
            if s.payload_len == 0 {
                return done; // the end of a connection never followed
            }
            if self.conns.len() >= MAX_CONNS {
                // Full: forget the least recently seen sixteenth in one pass,
                // so a flood of new connections costs one scan per 4096, not
                // each.
                let mut by_age: Vec<(u64, ConnKey)> = self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
                let n = MAX_CONNS / 16;
                by_age.select_nth_unstable_by_key(n, |(t, _)| *t);
                for (_, k) in by_age.into_iter().take(n) {
                    done.extend(self.flush(k));
                }
            }
        }
        let st = self.conns.entry(key).or_insert_with(|| ConnState {
            conn: Conn::new(s.proto),
            streams: Default::default(),
            last_ns: s.ts_ns,
            ifindex: s.ifindex,
            target: None,
        });
        st.last_ns = st.last_ns.max(s.ts_ns);
        if s.dir == Dir::ToServer {
            st.ifindex = s.ifindex;
        }
        if target.is_some() {
            st.target = target;
        }
        let rst = s.tcp_flags & TCP_RST != 0;
        let mut ex = Vec::new();
        st.segment(s, &mut ex);
        let (ifindex, target, over) = (st.ifindex, st.target, rst || st.ended());
        done.extend(ex.into_iter().map(|exchange| Done {
            client,
            server,
            target,
            ifindex,
            exchange,
        }));
        if over {
            // Reset, or both sides closed: nothing more will be paired.
            done.extend(self.flush(key));
        }
        done
    }

    fn flush(&mut self, key: ConnKey) -> Vec<Done> {
        let Some(mut st) = self.conns.remove(&key) else {
            return Vec::new();
        };
        let mut ex = Vec::new();
        for d in [Dir::ToServer, Dir::ToClient] {
            if st.streams[idx(d)].waiting() {
                st.skip_hole(d, &mut ex);
            }
        }
        ex.extend(st.conn.flush());
        ex.into_iter()
            .map(|exchange| Done {
                client: key.client,
                server: key.server,
                target: st.target,
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
        let mut over = Vec::new();
        for (k, st) in self.conns.iter_mut() {
            if st
                .oldest_pending()
                .is_some_and(|t| now_ns.saturating_sub(t) > HOLE_WAIT_NS)
            {
                let mut ex = Vec::new();
                for d in [Dir::ToServer, Dir::ToClient] {
                    if st.streams[idx(d)].waiting() {
                        st.skip_hole(d, &mut ex);
                    }
                }
                done.extend(ex.into_iter().map(|exchange| Done {
                    client: k.client,
                    server: k.server,
                    target: st.target,
                    ifindex: st.ifindex,
                    exchange,
                }));
                if st.ended() {
                    over.push(*k);
                }
            }
        }
        for k in over {
            done.extend(self.flush(k));
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
        }
    }
}

/// The audit log of L7 records: the store's rows as [`L7Record`]s.
pub struct L7Log {
    store: Arc<AuditStore<L7Record>>,
}

impl L7Log {
    pub fn new(store: Arc<AuditStore<L7Record>>) -> Self {
        L7Log { store }
    }

    pub fn store(&self) -> &AuditStore<L7Record> {
        &self.store
    }

    /// Queues a record for the writer, which serialises it (a full queue
    /// drops and counts it).
    pub fn push(&self, r: &L7Record) {
        self.store.push(AuditRow {
            ts_ns: r.ts_ns,
            proto: r.proto.as_str(),
            record: r.clone(),
        });
    }

    /// Records in request order (by `ts_ns`, the request's time), oldest
    /// first: the newest `limit` matching the filters.
    pub fn query(
        &self,
        proto: Option<Proto>,
        since_ns: Option<u64>,
        limit: usize,
    ) -> Result<Vec<L7Record>, AuditError> {
        let rows = self.store.query(proto.map(Proto::as_str), since_ns, limit)?;
        Ok(rows
            .iter()
            .filter_map(|r| match serde_json::from_str(r) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable audit record");
                    None
                }
            })
            .collect())
    }
}

/// The L7 stage of the ring reader: reassembly, records, log, metrics.
pub struct L7Stage {
    pub assembler: Assembler,
    pub log: Option<Arc<L7Log>>,
    pub metrics: L7Metrics,
}

impl L7Stage {
    pub fn new(log: Option<Arc<L7Log>>, metrics: L7Metrics) -> Self {
        L7Stage {
            assembler: Assembler::new(),
            log,
            metrics,
        }
    }

    /// Turns a finished exchange into a record, counts and stores it.
    pub fn record(&self, d: Done, clock: &Clock, interface: String) -> L7Record {
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
            target: d.target.map(|t| t.ip()),
            target_port: d.target.map(|t| t.port()),
            request: e.request.clone(),
            response: e.response.clone(),
            status: status.clone(),
            error_code,
            latency_ms: latency.map(|ns| ns as f64 / 1e6),
            req_bytes: e.req_bytes,
            resp_bytes: e.resp_bytes,
            partial: e.partial,
            client_container: None,
            server_container: None,
            client_pid: None,
            client_comm: None,
            server_pid: None,
            server_comm: None,
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
        if let Some(log) = &self.log {
            log.push(&r);
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
            tcp_flags: 0,
            xlat: None,
            data: data.to_vec(),
        }
    }

    /// An HTTP capture between `src` and `dst` (FIN set if `fin`).
    #[allow(clippy::too_many_arguments)]
    fn http(src: &str, dst: &str, dir: Dir, seq: u32, data: &[u8], fin: bool, xlat: Option<Xlat>, ts: u64) -> Segment {
        Segment {
            ts_ns: ts,
            ifindex: 1,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: Proto::Http,
            dir,
            seq,
            payload_len: data.len() as u32,
            tcp_flags: if fin { TCP_FIN } else { 0 },
            xlat,
            data: data.to_vec(),
        }
    }

    fn status(d: &Done) -> Option<u16> {
        match &d.exchange.response {
            Some(Summary::HttpResponse { status, .. }) => Some(*status),
            _ => None,
        }
    }

    fn path(d: &Done) -> Option<&str> {
        match &d.exchange.request {
            Some(Summary::HttpRequest { path, .. }) => Some(path),
            _ => None,
        }
    }

    const C: &str = "198.18.1.2:40000";
    const S: &str = "198.18.2.2:80";
    const GET: &[u8] = b"GET /old HTTP/1.0\r\nHost: s\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body, until the close";

    #[test]
    fn the_servers_fin_finishes_a_close_delimited_response_at_once() {
        let mut a = Assembler::new();
        assert!(a
            .segment(http(C, S, Dir::ToServer, 100, GET, false, None, 10))
            .is_empty());
        assert!(a
            .segment(http(S, C, Dir::ToClient, 500, RESP, false, None, 20))
            .is_empty());
        // The FIN alone (no payload), right after the body.
        let fin = http(S, C, Dir::ToClient, 500 + RESP.len() as u32, b"", true, None, 30);
        let done = a.segment(fin);
        assert_eq!(done.len(), 1, "the record is out at the FIN, not at the idle flush");
        assert_eq!((path(&done[0]), status(&done[0])), (Some("/old"), Some(200)));
        assert_eq!(done[0].exchange.latency_ns(), Some(10));
        assert_eq!(done[0].exchange.resp_bytes, RESP.len() as u64);
        assert!(!done[0].exchange.partial);
        assert_eq!(done[0].target, None);
        // The client's FIN closes the connection: forgotten, nothing more.
        let cfin = http(C, S, Dir::ToServer, 100 + GET.len() as u32, b"", true, None, 31);
        assert!(a.segment(cfin).is_empty());
        assert_eq!(a.connections(), 0);
        assert!(a.tick(31 + IDLE_NS + 1).is_empty(), "nothing is reported twice");
        // A stray FIN of a connection never seen is no connection.
        assert!(a.segment(http(S, C, Dir::ToClient, 9, b"", true, None, 40)).is_empty());
        assert_eq!(a.connections(), 0);
    }

    #[test]
    fn a_fin_waits_for_the_bytes_before_it() {
        let mut a = Assembler::new();
        a.segment(http(C, S, Dir::ToServer, 100, GET, false, None, 10));
        let (h1, rest) = RESP.split_at(20);
        let (h2, h3) = rest.split_at(10);
        a.segment(http(S, C, Dir::ToClient, 500, h1, false, None, 20));
        // The FIN (with the last bytes) overtakes the middle.
        let last = http(S, C, Dir::ToClient, 530, h3, true, None, 21);
        assert!(a.segment(last).is_empty(), "the middle is still missing");
        let done = a.segment(http(S, C, Dir::ToClient, 520, h2, false, None, 22));
        assert_eq!(done.len(), 1);
        assert_eq!(status(&done[0]), Some(200));
        assert!(!done[0].exchange.partial);

        // A hole before the FIN that never fills: skipped after the wait,
        // and the response ends partial.
        let mut a = Assembler::new();
        a.segment(http(C, S, Dir::ToServer, 100, GET, false, None, 10));
        a.segment(http(S, C, Dir::ToClient, 500, h1, false, None, 20));
        assert!(a
            .segment(http(S, C, Dir::ToClient, 500 + RESP.len() as u32, b"", true, None, 30))
            .is_empty());
        assert!(a.tick(30 + HOLE_WAIT_NS / 2).is_empty());
        let done = a.tick(30 + HOLE_WAIT_NS + 1);
        assert_eq!(done.len(), 1);
        assert_eq!(status(&done[0]), Some(200));
        assert!(done[0].exchange.partial);
    }

    #[test]
    fn a_reset_ends_the_connection() {
        let mut a = Assembler::new();
        a.segment(http(C, S, Dir::ToServer, 100, GET, false, None, 10));
        let mut rst = http(S, C, Dir::ToClient, 500, b"", false, None, 20);
        rst.tcp_flags = TCP_RST;
        let done = a.segment(rst);
        assert_eq!(done.len(), 1);
        assert_eq!(path(&done[0]), Some("/old"));
        assert!(done[0].exchange.response.is_none() && done[0].exchange.partial);
        assert_eq!(a.connections(), 0);
    }

    #[test]
    fn a_forwarded_exchange_pairs_across_the_translation() {
        // The client dials the service; the kernel sends the request on to
        // the target (captured before, so addressed to the service) and the
        // target's reply comes back from the target (captured before its
        // reverse translation).
        let (svc, target) = ("198.18.250.1:80", "198.18.2.2:8080");
        let to_target = Some(Xlat::Dnat {
            target: target.parse().unwrap(),
        });
        let from_service = Some(Xlat::Snat {
            service: svc.parse().unwrap(),
        });
        let mut a = Assembler::new();
        let req = b"GET /fwd HTTP/1.1\r\nHost: svc\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(a
            .segment(http(C, svc, Dir::ToServer, 1, req, false, to_target, 10))
            .is_empty());
        let done = a.segment(http(target, C, Dir::ToClient, 7, resp, false, from_service, 20));
        assert_eq!(a.connections(), 1, "one connection, not two halves");
        assert_eq!(done.len(), 1);
        let d = &done[0];
        assert_eq!((path(d), status(d)), (Some("/fwd"), Some(200)));
        assert!(!d.exchange.partial);
        assert_eq!(d.exchange.latency_ns(), Some(10));
        assert_eq!(d.client, C.parse().unwrap());
        assert_eq!(d.server, svc.parse().unwrap(), "the service the client dialled");
        assert_eq!(d.target, Some(target.parse().unwrap()), "and who answered");
        // Both FINs close it, with nothing left over.
        let fin = http(
            target,
            C,
            Dir::ToClient,
            7 + resp.len() as u32,
            b"",
            true,
            from_service,
            30,
        );
        assert!(a.segment(fin).is_empty());
        let fin = http(C, svc, Dir::ToServer, 1 + req.len() as u32, b"", true, to_target, 31);
        assert!(a.segment(fin).is_empty());
        assert_eq!(a.connections(), 0);
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
        assert_eq!(s.xlat, None);
        assert!(decode_segment(&b[..abi::HDR + 2]).is_none(), "truncated");
        let mut bad = b.clone();
        bad[29] = 9; // proto (after h, ifindex, seq, ports, family)
        assert!(decode_segment(&bad).is_none());
        assert!(decode_segment(&[0u8; 10]).is_none());

        // The previous version's 72-byte header (its programs may still
        // write into the pinned ring): the same segment, untranslated.
        let mut old = b[..abi::HDR_V1].to_vec();
        old[2..4].copy_from_slice(&((abi::HDR_V1 + 4) as u16).to_ne_bytes());
        old.extend_from_slice(b"GET ");
        let o = decode_segment(&old).unwrap();
        assert_eq!((o.src, o.dst, o.xlat, o.data), (s.src, s.dst, None, s.data.clone()));
        assert!(decode_segment(&old[..abi::HDR_V1 + 2]).is_none(), "truncated");

        // A forwarded reply: the service it stands for.
        let mut x = h;
        x.flags = abi::F_SNAT;
        x.xaddr[..4].copy_from_slice(&[198, 18, 250, 1]);
        x.xport = 80;
        // SAFETY: as above.
        let mut b = unsafe { std::slice::from_raw_parts((&x as *const EvL7).cast::<u8>(), abi::HDR) }.to_vec();
        b.extend_from_slice(b"GET ");
        let service = "198.18.250.1:80".parse().unwrap();
        assert_eq!(decode_segment(&b).unwrap().xlat, Some(Xlat::Snat { service }));
        b[38] = 7; // flags: unknown
        assert!(decode_segment(&b).is_none());

        // A FIN alone is a segment; an empty capture without FIN or RST is
        // not.
        let mut f = h;
        f.payload_len = 0;
        f.cap_len = 0;
        f.h.size = abi::HDR as u16;
        f.tcp_flags = TCP_FIN | 0x10;
        // SAFETY: as above.
        let b = unsafe { std::slice::from_raw_parts((&f as *const EvL7).cast::<u8>(), abi::HDR) }.to_vec();
        let s = decode_segment(&b).unwrap();
        assert_eq!((s.payload_len, s.tcp_flags & TCP_FIN), (0, TCP_FIN));
        let mut b = b;
        b[31] = 0x10; // ACK only
        assert!(decode_segment(&b).is_none());
    }
}
