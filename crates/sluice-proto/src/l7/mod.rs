//! L7 visibility in user space: protocol parsers that turn the two byte
//! streams of a TCP connection (reassembled from captured payload, possibly
//! with gaps) into request/response [`Exchange`]s.
//!
//! One [`Conn`] per connection and protocol consumes both directions with
//! [`Conn::feed`], is told about lost bytes with [`Conn::gap`] and about
//! the end of a direction (a TCP FIN) with [`Conn::end`], and is drained
//! with [`Conn::flush`] when the connection is forgotten. Each direction is parsed
//! incrementally: whatever is not yet a complete unit (an HTTP header block, a
//! RESP line, a MySQL packet header and the first bytes of its payload) is
//! kept in a per-direction buffer of at most [`MAX_BUFFER`] bytes, and bodies,
//! bulk strings and rows are skipped without being buffered. Requests wait in
//! a FIFO of at most [`MAX_PENDING`] entries for their responses, which is how
//! HTTP keep-alive and pipelining, Redis pipelines and MySQL commands pair.
//!
//! Supported: HTTP/1.0 and 1.1 ([`http`]), Redis RESP2 with RESP3 types
//! ([`redis`]) and the MySQL/MariaDB client/server protocol ([`mysql`]).
//! [`detect`] guesses the protocol from the first bytes of a connection.

use serde::{Deserialize, Serialize};

pub mod http;
pub mod mysql;
mod pair;
pub mod redis;

use pair::Pairer;

/// Most bytes of an incomplete unit kept per direction; a unit that does not
/// complete within this many bytes is dropped and the parser resyncs.
pub const MAX_BUFFER: usize = 64 * 1024;
/// Most requests waiting for a response per connection; the oldest is
/// returned without response (partial) when another one arrives.
pub const MAX_PENDING: usize = 1024;
/// Longest text kept in a summary (path, host, key, query, error message), in
/// bytes; longer text is cut (the exchange is not marked partial for that).
pub const MAX_TEXT: usize = 2048;

/// An application protocol the parsers understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// HTTP/1.0 and HTTP/1.1.
    Http,
    /// Redis serialization protocol (RESP2, RESP3 types tolerated).
    Redis,
    /// MySQL/MariaDB client/server protocol.
    Mysql,
}

impl Proto {
    /// Every protocol, in a fixed order.
    pub const ALL: [Proto; 3] = [Proto::Http, Proto::Redis, Proto::Mysql];

    /// The lowercase name, as in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Redis => "redis",
            Proto::Mysql => "mysql",
        }
    }

    /// Parses a name as written by [`Proto::as_str`] (case-insensitive;
    /// `mariadb` is accepted for MySQL).
    pub fn parse(s: &str) -> Option<Proto> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("http") {
            Some(Proto::Http)
        } else if s.eq_ignore_ascii_case("redis") {
            Some(Proto::Redis)
        } else if s.eq_ignore_ascii_case("mysql") || s.eq_ignore_ascii_case("mariadb") {
            Some(Proto::Mysql)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Direction of a byte stream within a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to server: requests.
    ToServer,
    /// Server to client: responses.
    ToClient,
}

/// One side of an exchange, summarised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Summary {
    /// An HTTP request head.
    HttpRequest {
        method: String,
        path: String,
        host: Option<String>,
        content_length: Option<u64>,
    },
    /// An HTTP response head (the final one: 1xx interim responses are skipped).
    HttpResponse { status: u16, content_length: Option<u64> },
    /// A Redis command: name uppercased, first key if the command has one,
    /// and the number of arguments after the name.
    RedisCommand {
        command: String,
        key: Option<String>,
        args: usize,
    },
    /// A Redis reply: `simple`, `error`, `integer`, `bulk`, `null`, `array`,
    /// `map`, `set`, `double`, `boolean`, `verbatim`, `bignum` or `push`; the
    /// error text for `error`.
    RedisReply { kind: String, error: Option<String> },
    /// A MySQL command (`COM_QUERY`, `COM_STMT_PREPARE`, ...). `query` is the
    /// SQL text of a query or prepare (and of an execute whose prepare was
    /// seen), `stmt_id` the statement of an execute/close/reset (and of a
    /// prepare, once its reply is seen), `schema` the database of
    /// `COM_INIT_DB`.
    MysqlCommand {
        command: String,
        query: Option<String>,
        stmt_id: Option<u32>,
        schema: Option<String>,
    },
    /// A MySQL reply: `ok`, `err`, `result_set`, `prepare_ok`, `eof`,
    /// `string` (COM_STATISTICS), `field_list` or `unknown`.
    MysqlReply {
        kind: String,
        error_code: Option<u16>,
        error_message: Option<String>,
        rows: Option<u64>,
        affected_rows: Option<u64>,
    },
}

/// A request paired with its response (either may be missing: a response
/// whose request was never seen, a request still pending when the connection
/// closed/was flushed).
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub proto: Proto,
    pub request: Option<Summary>,
    pub response: Option<Summary>,
    /// Capture time of the first byte of the request (from the feed call).
    pub req_ts_ns: Option<u64>,
    /// Capture time of the first byte of the response.
    pub resp_ts_ns: Option<u64>,
    /// Wire size of the request message (including lost bytes).
    pub req_bytes: u64,
    /// Wire size of the response message (including lost bytes).
    pub resp_bytes: u64,
    /// Any doubt: gap inside, truncated, resynced, unparseable bits, missing
    /// half.
    pub partial: bool,
}

impl Exchange {
    /// Time from the first byte of the request to the first byte of the
    /// response, if both were seen in that order.
    pub fn latency_ns(&self) -> Option<u64> {
        self.resp_ts_ns?.checked_sub(self.req_ts_ns?)
    }
}

/// Per-connection parser+pairer for one protocol; consumes both directions.
pub struct Conn {
    proto: Proto,
    inner: Inner,
}

enum Inner {
    Http(Box<Duplex<http::Side>>),
    Redis(Box<Duplex<redis::Side>>),
    Mysql(Box<Duplex<mysql::Side>>),
}

impl Conn {
    /// A parser for a connection speaking `proto`, seen from its start or
    /// from anywhere in the middle.
    pub fn new(proto: Proto) -> Self {
        let inner = match proto {
            Proto::Http => Inner::Http(Box::new(http::duplex())),
            Proto::Redis => Inner::Redis(Box::new(redis::duplex())),
            Proto::Mysql => Inner::Mysql(Box::new(mysql::duplex())),
        };
        Conn { proto, inner }
    }

    /// The protocol this connection is parsed as.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Bytes of one direction, in order, as they arrived (ts = capture time of
    /// the segment in ns). May contain any number of (partial) messages.
    /// Returns the exchanges completed by this data.
    pub fn feed(&mut self, dir: Dir, ts_ns: u64, data: &[u8]) -> Vec<Exchange> {
        match &mut self.inner {
            Inner::Http(c) => c.feed(dir, ts_ns, data),
            Inner::Redis(c) => c.feed(dir, ts_ns, data),
            Inner::Mysql(c) => c.feed(dir, ts_ns, data),
        }
    }

    /// `len` bytes of this direction were lost (sequence gap or capture
    /// cap). The parser keeps its framing when the lost bytes fall inside
    /// something it was skipping anyway (a body, a bulk string, the rest of a
    /// MySQL packet) and resyncs otherwise; whatever was in flight is marked
    /// partial.
    pub fn gap(&mut self, dir: Dir, len: u64) {
        match &mut self.inner {
            Inner::Http(c) => c.gap(dir, len),
            Inner::Redis(c) => c.gap(dir, len),
            Inner::Mysql(c) => c.gap(dir, len),
        }
    }

    /// The sender of `dir` closed its side (a TCP FIN, after every byte fed
    /// so far): a message delimited by the close (an HTTP response without
    /// a length) is complete, one cut short is returned partial. When the
    /// server's side ends, the requests still waiting can get no response
    /// and are returned without one. The other direction goes on.
    pub fn end(&mut self, dir: Dir) -> Vec<Exchange> {
        match &mut self.inner {
            Inner::Http(c) => c.end(dir),
            Inner::Redis(c) => c.end(dir),
            Inner::Mysql(c) => c.end(dir),
        }
    }

    /// Connection closed or evicted: completes a response delimited by the
    /// close (HTTP/1.0 style), returns whatever was in flight as partial and
    /// pending requests as exchanges without response (partial). The parser
    /// can be fed again afterwards, as if from the middle of a connection.
    pub fn flush(&mut self) -> Vec<Exchange> {
        match &mut self.inner {
            Inner::Http(c) => c.flush(),
            Inner::Redis(c) => c.flush(),
            Inner::Mysql(c) => c.flush(),
        }
    }

    /// Bytes currently buffered (both directions), at most 2 x [`MAX_BUFFER`].
    pub fn buffered(&self) -> usize {
        match &self.inner {
            Inner::Http(c) => c.buffered(),
            Inner::Redis(c) => c.buffered(),
            Inner::Mysql(c) => c.buffered(),
        }
    }

    /// Requests waiting for a response, at most [`MAX_PENDING`].
    pub fn pending(&self) -> usize {
        match &self.inner {
            Inner::Http(c) => c.pending(),
            Inner::Redis(c) => c.pending(),
            Inner::Mysql(c) => c.pending(),
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("proto", &self.proto)
            .field("buffered", &self.buffered())
            .field("pending", &self.pending())
            .finish()
    }
}

/// Guesses the protocol from the first bytes a client sends (HTTP method,
/// RESP array `*N\r\n$`, MySQL handshake response) or a server sends (MySQL
/// server greeting: 3-byte length, seq 0, protocol version 10; `HTTP/1.`).
pub fn detect(dir: Dir, first: &[u8]) -> Option<Proto> {
    match dir {
        Dir::ToServer => {
            if http::is_request_start(first) {
                Some(Proto::Http)
            } else if redis::is_command_start(first) {
                Some(Proto::Redis)
            } else if mysql::is_handshake_response(first) {
                Some(Proto::Mysql)
            } else {
                None
            }
        }
        Dir::ToClient => {
            if mysql::is_greeting(first) {
                Some(Proto::Mysql)
            } else if first.starts_with(b"HTTP/1.") {
                Some(Proto::Http)
            } else {
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Shared machinery: the per-direction driver that buffers incomplete units.

/// Where a step starts: stream offset (including lost bytes) and the capture
/// time of the segment holding that byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    pub abs: u64,
    pub ts: u64,
}

/// What a parser step did with its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The input holds no complete unit: keep it and wait for more.
    Need,
    /// Consumed this many bytes (0 only together with a state change).
    Eat(usize),
}

/// One direction's parser, driven by [`Driver`].
pub(crate) trait Parser {
    /// State shared by both directions of the connection (the pairer, ...).
    type Shared;
    /// Parses from the start of `data` (never empty).
    fn step(&mut self, sh: &mut Self::Shared, data: &[u8], at: At) -> Step;
    /// `buffered` (an incomplete unit starting at `at`, possibly empty) is
    /// followed by `lost` bytes that will never be seen (`lost` is 0 when the
    /// buffer overflowed); parsing goes on after them.
    fn gap(&mut self, sh: &mut Self::Shared, buffered: &[u8], at: At, lost: u64);
    /// End of stream; `buffered` is the incomplete unit left over.
    fn flush(&mut self, sh: &mut Self::Shared, buffered: &[u8], at: At);
    /// The pairer inside the shared state.
    fn pairer(sh: &mut Self::Shared) -> &mut Pairer;
    /// The pending requests in the shared state.
    fn pending(sh: &Self::Shared) -> usize;
}

/// Both directions of a connection and their shared state.
pub(crate) struct Duplex<P: Parser> {
    client: Driver<P>,
    server: Driver<P>,
    sh: P::Shared,
}

impl<P: Parser> Duplex<P> {
    pub fn new(client: P, server: P, sh: P::Shared) -> Self {
        Duplex {
            client: Driver::new(client),
            server: Driver::new(server),
            sh,
        }
    }

    pub fn feed(&mut self, dir: Dir, ts: u64, data: &[u8]) -> Vec<Exchange> {
        match dir {
            Dir::ToServer => self.client.feed(&mut self.sh, ts, data),
            Dir::ToClient => self.server.feed(&mut self.sh, ts, data),
        }
        P::pairer(&mut self.sh).take()
    }

    pub fn gap(&mut self, dir: Dir, len: u64) {
        match dir {
            Dir::ToServer => self.client.gap(&mut self.sh, len),
            Dir::ToClient => self.server.gap(&mut self.sh, len),
        }
    }

    pub fn end(&mut self, dir: Dir) -> Vec<Exchange> {
        match dir {
            Dir::ToServer => self.client.flush(&mut self.sh),
            Dir::ToClient => {
                self.server.flush(&mut self.sh);
                P::pairer(&mut self.sh).flush();
            }
        }
        P::pairer(&mut self.sh).take()
    }

    pub fn flush(&mut self) -> Vec<Exchange> {
        // The server side first: a response in flight pairs with its request
        // before the client side adds what it had in flight.
        self.server.flush(&mut self.sh);
        self.client.flush(&mut self.sh);
        let p = P::pairer(&mut self.sh);
        p.flush();
        p.take()
    }

    pub fn buffered(&self) -> usize {
        self.client.buffered() + self.server.buffered()
    }

    pub fn pending(&self) -> usize {
        P::pending(&self.sh)
    }
}

/// Feeds a [`Parser`] from arbitrary chunks, keeping what it cannot use yet.
pub(crate) struct Driver<P> {
    pub p: P,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]` (or of the next byte when `buf` is empty).
    abs: u64,
    /// Capture time of `buf[0]`.
    buf_ts: u64,
}

impl<P: Parser> Driver<P> {
    pub fn new(p: P) -> Self {
        Driver {
            p,
            buf: Vec::new(),
            abs: 0,
            buf_ts: 0,
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn feed(&mut self, sh: &mut P::Shared, ts: u64, mut data: &[u8]) {
        while !data.is_empty() {
            if self.buf.is_empty() {
                // Fast path: parse straight from the caller's slice.
                let n = run(&mut self.p, sh, data, self.abs, 0, ts, ts);
                self.abs = self.abs.wrapping_add(n as u64);
                data = &data[n..];
                if data.is_empty() {
                    break;
                }
                let take = data.len().min(MAX_BUFFER);
                self.buf.extend_from_slice(&data[..take]);
                self.buf_ts = ts;
                data = &data[take..];
            } else {
                let old = self.buf.len();
                let take = data.len().min(MAX_BUFFER);
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                let buf = std::mem::take(&mut self.buf);
                let n = run(&mut self.p, sh, &buf, self.abs, old, self.buf_ts, ts);
                self.buf = buf;
                self.abs = self.abs.wrapping_add(n as u64);
                self.buf.drain(..n);
                if n >= old {
                    self.buf_ts = ts;
                }
                if self.buf.len() > MAX_BUFFER {
                    self.overflow(sh);
                }
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > 2 * MAX_BUFFER {
            self.buf = Vec::new();
        }
    }

    fn overflow(&mut self, sh: &mut P::Shared) {
        let buf = std::mem::take(&mut self.buf);
        let at = At {
            abs: self.abs,
            ts: self.buf_ts,
        };
        self.p.gap(sh, &buf, at, 0);
        self.abs = self.abs.wrapping_add(buf.len() as u64);
        self.buf = buf;
        self.buf.clear();
    }

    pub fn gap(&mut self, sh: &mut P::Shared, lost: u64) {
        if lost == 0 {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let at = At {
            abs: self.abs,
            ts: self.buf_ts,
        };
        self.p.gap(sh, &buf, at, lost);
        self.abs = self.abs.wrapping_add(buf.len() as u64).wrapping_add(lost);
        self.buf = buf;
        self.buf.clear();
    }

    pub fn flush(&mut self, sh: &mut P::Shared) {
        let buf = std::mem::take(&mut self.buf);
        let at = At {
            abs: self.abs,
            ts: self.buf_ts,
        };
        self.p.flush(sh, &buf, at);
        self.abs = self.abs.wrapping_add(buf.len() as u64);
        self.buf = buf;
        self.buf.clear();
    }
}

/// Steps `p` over `input` until it needs more; returns the bytes consumed.
/// Bytes before `old` arrived at `old_ts`, the rest at `ts`.
fn run<P: Parser>(p: &mut P, sh: &mut P::Shared, input: &[u8], abs: u64, old: usize, old_ts: u64, ts: u64) -> usize {
    let mut pos = 0;
    let mut idle = 0;
    while pos < input.len() {
        let at = At {
            abs: abs.wrapping_add(pos as u64),
            ts: if pos < old { old_ts } else { ts },
        };
        match p.step(sh, &input[pos..], at) {
            Step::Need => break,
            Step::Eat(0) => {
                // State changes only; a parser must not spin.
                idle += 1;
                if idle > 8 {
                    break;
                }
            }
            Step::Eat(n) => {
                idle = 0;
                pos += n.min(input.len() - pos);
            }
        }
    }
    pos
}

/// Text of a summary field: lossy UTF-8, cut to [`MAX_TEXT`] bytes.
pub(crate) fn text(b: &[u8]) -> String {
    let b = &b[..b.len().min(MAX_TEXT)];
    String::from_utf8_lossy(b).into_owned()
}

/// Position of the first `\n` in `data`.
pub(crate) fn find_nl(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the protocol tests.

    use super::{Conn, Dir, Exchange, Proto};

    /// Feeds `(dir, bytes)` steps, each as one segment with ts = step index
    /// * 1000, then flushes; returns every exchange.
    pub fn run_steps(proto: Proto, steps: &[(Dir, &[u8])]) -> Vec<Exchange> {
        let mut c = Conn::new(proto);
        let mut out = Vec::new();
        for (i, (dir, data)) in steps.iter().enumerate() {
            out.extend(c.feed(*dir, i as u64 * 1000, data));
        }
        out.extend(c.flush());
        out
    }

    /// Exchanges with timestamps and byte counts cleared (chunking changes
    /// which segment a first byte arrived in).
    pub fn strip(mut v: Vec<Exchange>) -> Vec<Exchange> {
        for e in &mut v {
            e.req_ts_ns = None;
            e.resp_ts_ns = None;
        }
        v
    }

    /// One fuzz case shared by every parser: arbitrary (direction, bytes,
    /// gap length, action) steps never panic, keep the buffers and the
    /// pending queue within their caps, and flush to an empty queue.
    pub fn fuzz_ops(
        proto: Proto,
        ops: Vec<(bool, Vec<u8>, u64, u8)>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        let mut c = Conn::new(proto);
        for (i, (to_server, data, gap, what)) in ops.into_iter().enumerate() {
            let dir = if to_server { Dir::ToServer } else { Dir::ToClient };
            match what {
                0 => c.gap(dir, gap),
                1 => {
                    c.flush();
                }
                2 => {
                    c.end(dir);
                }
                _ => {
                    c.feed(dir, i as u64, &data);
                }
            }
            prop_assert!(c.buffered() <= 2 * super::MAX_BUFFER);
            prop_assert!(c.pending() <= super::MAX_PENDING);
        }
        c.flush();
        prop_assert_eq!(c.pending(), 0);
        Ok(())
    }

    /// The whole client stream, then the whole server stream, each fed in
    /// chunks of `chunk` bytes; then flush.
    pub fn run_chunked(proto: Proto, c2s: &[u8], s2c: &[u8], chunk: usize) -> Vec<Exchange> {
        let mut c = Conn::new(proto);
        let mut out = Vec::new();
        let mut ts = 0;
        for (dir, data) in [(Dir::ToServer, c2s), (Dir::ToClient, s2c)] {
            for piece in data.chunks(chunk.max(1)) {
                ts += 1;
                out.extend(c.feed(dir, ts, piece));
                assert!(c.buffered() <= 2 * super::MAX_BUFFER);
            }
        }
        out.extend(c.flush());
        out
    }

    /// Asserts that splitting either stream at every byte boundary, and
    /// feeding both one byte at a time, gives the same exchanges as feeding
    /// each stream whole.
    pub fn assert_split_invariant(proto: Proto, c2s: &[u8], s2c: &[u8]) -> Vec<Exchange> {
        let whole = run_chunked(proto, c2s, s2c, usize::MAX);
        let base = strip(whole.clone());
        for i in 0..=c2s.len() {
            let mut c = Conn::new(proto);
            let mut out = c.feed(Dir::ToServer, 1, &c2s[..i]);
            out.extend(c.feed(Dir::ToServer, 2, &c2s[i..]));
            out.extend(c.feed(Dir::ToClient, 3, s2c));
            out.extend(c.flush());
            assert_eq!(strip(out), base, "client stream split at {i}");
        }
        for i in 0..=s2c.len() {
            let mut c = Conn::new(proto);
            let mut out = c.feed(Dir::ToServer, 1, c2s);
            out.extend(c.feed(Dir::ToClient, 2, &s2c[..i]));
            out.extend(c.feed(Dir::ToClient, 3, &s2c[i..]));
            out.extend(c.flush());
            assert_eq!(strip(out), base, "server stream split at {i}");
        }
        assert_eq!(strip(run_chunked(proto, c2s, s2c, 1)), base, "one byte at a time");
        whole
    }

    /// Feeds a recorded session with bytes overwritten (`flips`: position,
    /// value), cut into segments at `cuts` and with `gaps` (segment index,
    /// lost length) inserted, alternating directions segment by segment;
    /// asserts the bounds hold throughout and that flush drains the queue.
    pub fn fuzz_session(
        proto: Proto,
        c2s: &[u8],
        s2c: &[u8],
        cuts: &[usize],
        flips: &[(usize, u8)],
        gaps: &[(usize, u64)],
    ) {
        let mut streams = [c2s.to_vec(), s2c.to_vec()];
        for &(pos, b) in flips {
            let s = &mut streams[pos % 2];
            if !s.is_empty() {
                let n = s.len();
                s[pos % n] = b;
            }
        }
        let mut segs: [Vec<&[u8]>; 2] = [Vec::new(), Vec::new()];
        for (k, s) in streams.iter().enumerate() {
            let mut points: Vec<usize> = cuts.iter().map(|&x| x % (s.len() + 1)).collect();
            points.extend([0, s.len()]);
            points.sort_unstable();
            points.dedup();
            segs[k] = points.windows(2).map(|w| &s[w[0]..w[1]]).collect();
        }
        let mut c = Conn::new(proto);
        let n = segs[0].len().max(segs[1].len());
        for i in 0..n {
            for (k, dir) in [Dir::ToServer, Dir::ToClient].into_iter().enumerate() {
                if let Some(seg) = segs[k].get(i) {
                    c.feed(dir, i as u64, seg);
                }
                for &(at, len) in gaps {
                    if at == i * 2 + k {
                        c.gap(dir, len);
                    }
                }
                assert!(c.buffered() <= 2 * super::MAX_BUFFER);
                assert!(c.pending() <= super::MAX_PENDING);
            }
        }
        c.flush();
        assert_eq!(c.pending(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_names_round_trip() {
        for p in Proto::ALL {
            assert_eq!(Proto::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.as_str()));
        }
        assert_eq!(Proto::parse("MariaDB"), Some(Proto::Mysql));
        assert_eq!(Proto::parse("smtp"), None);
    }

    #[test]
    fn summary_serializes_tagged() {
        let s = Summary::RedisCommand {
            command: "GET".into(),
            key: Some("k".into()),
            args: 1,
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["type"], "redis_command");
        assert_eq!(j["command"], "GET");
        let back: Summary = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn latency() {
        let mut e = Exchange {
            proto: Proto::Http,
            request: None,
            response: None,
            req_ts_ns: Some(100),
            resp_ts_ns: Some(350),
            req_bytes: 0,
            resp_bytes: 0,
            partial: false,
        };
        assert_eq!(e.latency_ns(), Some(250));
        e.resp_ts_ns = Some(50);
        assert_eq!(e.latency_ns(), None);
        e.resp_ts_ns = None;
        assert_eq!(e.latency_ns(), None);
    }

    #[test]
    fn detect_protocols() {
        assert_eq!(detect(Dir::ToServer, b"GET / HTTP/1.1\r\n"), Some(Proto::Http));
        assert_eq!(detect(Dir::ToServer, b"POST /x HTTP/1.0\r\n"), Some(Proto::Http));
        assert_eq!(detect(Dir::ToServer, b"*1\r\n$4\r\nPING\r\n"), Some(Proto::Redis));
        assert_eq!(detect(Dir::ToClient, b"HTTP/1.1 200 OK\r\n"), Some(Proto::Http));
        let greeting = include_bytes!("testdata/mysql_session.s2c");
        assert_eq!(detect(Dir::ToClient, greeting), Some(Proto::Mysql));
        assert_eq!(detect(Dir::ToClient, &greeting[..40]), Some(Proto::Mysql));
        let cli = include_bytes!("testdata/mysql_cli.c2s");
        assert_eq!(detect(Dir::ToServer, cli), Some(Proto::Mysql));
        assert_eq!(
            detect(Dir::ToServer, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            None
        );
        assert_eq!(detect(Dir::ToServer, b""), None);
        assert_eq!(detect(Dir::ToClient, b"+OK\r\n"), None);
        assert_eq!(detect(Dir::ToServer, b"GETX / HTTP/1.1"), None);
    }

    #[test]
    fn driver_bounds_buffer_on_endless_header() {
        let mut c = Conn::new(Proto::Http);
        c.feed(Dir::ToServer, 1, b"GET / HTTP/1.1\r\n");
        let junk = vec![b'a'; 10_000];
        for i in 0..20 {
            c.feed(Dir::ToServer, 2 + i, &junk);
            assert!(c.buffered() <= MAX_BUFFER);
        }
        // After the overflow the parser resyncs on the next request.
        let out = c.feed(Dir::ToServer, 100, b"\r\nGET /next HTTP/1.1\r\n\r\n");
        assert!(out.is_empty());
        let out = c.feed(Dir::ToClient, 101, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(out.len(), 1);
        assert!(out[0].partial);
    }
}
