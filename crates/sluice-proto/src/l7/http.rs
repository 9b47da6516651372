//! HTTP/1.0 and HTTP/1.1: request and response heads are parsed with
//! `httparse`, bodies are skipped by `Content-Length` or by chunked
//! transfer-encoding (chunk sizes parsed across feed calls), and a response
//! with neither lasts until the connection closes (completed on flush).
//! Responses to HEAD, 1xx, 204 and 304 have no body; 1xx interim responses
//! other than 101 do not complete an exchange. After `101 Switching
//! Protocols` or a 2xx answer to CONNECT the connection is a tunnel and is no
//! longer parsed. After lost bytes the parser resyncs on the next line that
//! starts with a known method (requests) or `HTTP/1.` (responses).

use super::{
    find_nl,
    pair::{Half, Meta, Pairer},
    text, At, Duplex, Parser, Proto, Step, Summary,
};

/// Most header lines in one head (more is treated as garbage).
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 8 * 1024;

/// Methods a resync accepts at a line start (any token is parsed in sync).
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
];

/// Does `first` start like an HTTP request (`GET /...`)?
pub fn is_request_start(first: &[u8]) -> bool {
    METHODS.iter().any(|m| first.starts_with(m) && first.len() > m.len())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Like {
    Yes,
    Maybe,
    No,
}

fn prefix_like(data: &[u8], pat: &[u8]) -> Like {
    if data.len() >= pat.len() {
        if data.starts_with(pat) {
            Like::Yes
        } else {
            Like::No
        }
    } else if pat.starts_with(data) {
        Like::Maybe
    } else {
        Like::No
    }
}

fn looks_like_start(data: &[u8], request: bool) -> Like {
    if !request {
        return prefix_like(data, b"HTTP/1.");
    }
    let mut best = Like::No;
    for m in METHODS {
        match prefix_like(data, m) {
            Like::Yes => return Like::Yes,
            Like::Maybe => best = Like::Maybe,
            Like::No => {}
        }
    }
    best
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a request or status line.
    Head,
    /// Skipping a `Content-Length` body: bytes left.
    Body(u64),
    ChunkSize,
    /// Skipping chunk data: bytes left.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer,
    /// A response body delimited by the connection close.
    UntilClose,
    /// Looking for the next message start.
    Resync,
    /// Not HTTP any more (upgrade, CONNECT).
    Tunnel,
}

/// A message whose head was parsed and whose body is being skipped.
struct Msg {
    summary: Summary,
    ts: u64,
    start: u64,
    partial: bool,
    /// The queued request (request side).
    req_id: Option<u64>,
}

/// State shared by both directions.
pub(crate) struct Shared {
    pairer: Pairer,
    tunnel: bool,
}

/// One direction of an HTTP connection.
pub(crate) struct Side {
    request: bool,
    state: State,
    msg: Option<Msg>,
    /// In resync: the next byte starts a line.
    line_start: bool,
}

impl Side {
    fn new(request: bool) -> Self {
        Side {
            request,
            state: State::Head,
            msg: None,
            line_start: true,
        }
    }

    fn head(&mut self, sh: &mut Shared, data: &[u8], at: At) -> Step {
        // Stray line breaks between messages are tolerated (RFC 9112 2.2).
        let lead = data.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        if lead > 0 {
            return Step::Eat(lead);
        }
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut cfg = httparse::ParserConfig::default();
        cfg.allow_multiple_spaces_in_request_line_delimiters(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .ignore_invalid_headers_in_requests(true)
            .ignore_invalid_headers_in_responses(true);
        if self.request {
            let mut req = httparse::Request::new(&mut []);
            match cfg.parse_request_with_uninit_headers(&mut req, data, &mut headers) {
                Ok(httparse::Status::Complete(n)) => {
                    let method = req.method.unwrap_or("");
                    let path = req.path.unwrap_or("");
                    let h = Heads::of(req.headers);
                    let summary = Summary::HttpRequest {
                        method: text(method.as_bytes()),
                        path: text(path.as_bytes()),
                        host: h.host.map(text),
                        content_length: h.content_length,
                    };
                    let meta = Meta {
                        head: method == "HEAD",
                        connect: method == "CONNECT",
                        ..Meta::default()
                    };
                    let body = if h.chunked {
                        None
                    } else {
                        h.content_length.filter(|&l| l > 0)
                    };
                    let bytes = (n as u64).saturating_add(body.unwrap_or(0));
                    let half = Half {
                        summary: Some(summary.clone()),
                        ts: Some(at.ts),
                        bytes,
                        partial: h.bad,
                    };
                    let id = sh.pairer.request(half, meta);
                    if h.chunked || body.is_some() {
                        self.msg = Some(Msg {
                            summary,
                            ts: at.ts,
                            start: at.abs,
                            partial: h.bad,
                            req_id: Some(id),
                        });
                        self.state = if h.chunked {
                            State::ChunkSize
                        } else {
                            State::Body(body.unwrap_or(0))
                        };
                    }
                    Step::Eat(n)
                }
                Ok(httparse::Status::Partial) => Step::Need,
                Err(_) => self.garbage(sh, data, at),
            }
        } else {
            let mut resp = httparse::Response::new(&mut []);
            match cfg.parse_response_with_uninit_headers(&mut resp, data, &mut headers) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) && status != 101 {
                        // Interim response: the final one follows.
                        return Step::Eat(n);
                    }
                    let h = Heads::of(resp.headers);
                    let req = sh.pairer.head().unwrap_or_default();
                    let tunnel = status == 101 || (req.connect && (200..300).contains(&status));
                    let no_body = req.head || status == 204 || status == 304 || tunnel;
                    self.msg = Some(Msg {
                        summary: Summary::HttpResponse {
                            status,
                            content_length: h.content_length,
                        },
                        ts: at.ts,
                        start: at.abs,
                        partial: h.bad,
                        req_id: None,
                    });
                    let end = at.abs.wrapping_add(n as u64);
                    if no_body {
                        self.finish(sh, end);
                    } else if h.chunked {
                        self.state = State::ChunkSize;
                    } else {
                        match h.content_length {
                            Some(0) => self.finish(sh, end),
                            Some(l) => self.state = State::Body(l),
                            None => self.state = State::UntilClose,
                        }
                    }
                    if tunnel {
                        sh.tunnel = true;
                        self.state = State::Tunnel;
                    }
                    Step::Eat(n)
                }
                Ok(httparse::Status::Partial) => Step::Need,
                Err(_) => self.garbage(sh, data, at),
            }
        }
    }

    /// A head that does not parse: count it as a lost message and resync
    /// after this line.
    fn garbage(&mut self, sh: &mut Shared, data: &[u8], at: At) -> Step {
        self.lost_message(sh, data, Some(at.ts), 0);
        self.state = State::Resync;
        self.line_start = false;
        Step::Eat(0)
    }

    /// A message started at `buffered` and its end is unknown: queue a
    /// placeholder request, or complete the oldest request with a response
    /// we could not parse.
    /// Either way the pairs that follow are in doubt until the queue drains.
    fn lost_message(&mut self, sh: &mut Shared, buffered: &[u8], ts: Option<u64>, lost: u64) {
        let bytes = (buffered.len() as u64).saturating_add(lost);
        if self.request {
            let (summary, meta) = match request_line(buffered) {
                Some((s, m)) => (Some(s), m),
                None => (None, Meta::default()),
            };
            sh.pairer.doubt_next();
            sh.pairer.request(
                Half {
                    summary,
                    ts,
                    bytes,
                    partial: true,
                },
                meta,
            );
        } else {
            if sh.pairer.pending() > 0 {
                let summary = status_line(buffered);
                sh.pairer.response(Half {
                    summary,
                    ts,
                    bytes,
                    partial: true,
                });
            }
            sh.pairer.doubt_all();
        }
    }

    /// Framing lost without knowing whether a message was lost with it.
    fn doubt(&self, sh: &mut Shared) {
        if self.request {
            sh.pairer.doubt_next();
        } else {
            sh.pairer.doubt_all();
        }
    }

    /// The current message ends at stream offset `end`.
    fn finish(&mut self, sh: &mut Shared, end: u64) {
        self.state = State::Head;
        let Some(m) = self.msg.take() else { return };
        let bytes = end.wrapping_sub(m.start);
        if self.request {
            if let Some(id) = m.req_id {
                sh.pairer.update(id, |h| {
                    h.bytes = bytes;
                    h.partial |= m.partial;
                });
            }
        } else {
            sh.pairer.response(Half {
                summary: Some(m.summary),
                ts: Some(m.ts),
                bytes,
                partial: m.partial,
            });
        }
    }

    fn mark_partial(&mut self, sh: &mut Shared) {
        if let Some(m) = &mut self.msg {
            m.partial = true;
            if let Some(id) = m.req_id {
                sh.pairer.update(id, |h| h.partial = true);
            }
        }
    }

    /// Bad chunk framing: the message ends here, partial; resync.
    fn body_error(&mut self, sh: &mut Shared, at: At) -> Step {
        self.mark_partial(sh);
        self.finish(sh, at.abs);
        self.state = State::Resync;
        self.line_start = true;
        self.doubt(sh);
        Step::Eat(0)
    }

    fn resync(&mut self, data: &[u8]) -> Step {
        let mut p = if self.line_start {
            Some(0)
        } else {
            find_nl(data).map(|i| i + 1)
        };
        while let Some(pos) = p {
            match looks_like_start(&data[pos..], self.request) {
                Like::Yes => {
                    self.state = State::Head;
                    return Step::Eat(pos);
                }
                Like::Maybe => {
                    if pos == 0 {
                        return Step::Need;
                    }
                    self.line_start = true;
                    return Step::Eat(pos);
                }
                Like::No => p = find_nl(&data[pos..]).map(|i| pos + i + 1),
            }
        }
        self.line_start = data.last() == Some(&b'\n');
        Step::Eat(data.len())
    }
}

impl Parser for Side {
    type Shared = Shared;

    fn step(&mut self, sh: &mut Shared, data: &[u8], at: At) -> Step {
        if sh.tunnel {
            self.state = State::Tunnel;
        }
        match self.state {
            State::Tunnel | State::UntilClose => Step::Eat(data.len()),
            State::Head => self.head(sh, data, at),
            State::Body(left) => {
                let k = left.min(data.len() as u64);
                if k == left {
                    self.finish(sh, at.abs.wrapping_add(k));
                } else {
                    self.state = State::Body(left - k);
                }
                Step::Eat(k as usize)
            }
            State::ChunkSize => {
                let Some(i) = find_nl(&data[..data.len().min(MAX_LINE)]) else {
                    return if data.len() >= MAX_LINE {
                        self.body_error(sh, at)
                    } else {
                        Step::Need
                    };
                };
                match chunk_size(&data[..i]) {
                    Some(0) => self.state = State::Trailer,
                    Some(n) => self.state = State::ChunkData(n),
                    None => return self.body_error(sh, at),
                }
                Step::Eat(i + 1)
            }
            State::ChunkData(left) => {
                let k = left.min(data.len() as u64);
                self.state = if k == left {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left - k)
                };
                Step::Eat(k as usize)
            }
            State::ChunkEnd => match data {
                [b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Step::Eat(1)
                }
                [b'\r'] => Step::Need,
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Step::Eat(2)
                }
                _ => self.body_error(sh, at),
            },
            State::Trailer => {
                let Some(i) = find_nl(&data[..data.len().min(MAX_LINE)]) else {
                    return if data.len() >= MAX_LINE {
                        self.body_error(sh, at)
                    } else {
                        Step::Need
                    };
                };
                if i == 0 || (i == 1 && data[0] == b'\r') {
                    self.finish(sh, at.abs.wrapping_add(i as u64 + 1));
                }
                Step::Eat(i + 1)
            }
            State::Resync => self.resync(data),
        }
    }

    fn gap(&mut self, sh: &mut Shared, buffered: &[u8], at: At, lost: u64) {
        let ts = (!buffered.is_empty()).then_some(at.ts);
        let new_lost = match self.state {
            State::Tunnel => return,
            State::UntilClose => {
                self.mark_partial(sh);
                return;
            }
            State::Resync => {
                self.line_start = true;
                return;
            }
            State::Body(left) if buffered.is_empty() && lost <= left => {
                self.mark_partial(sh);
                if lost == left {
                    self.finish(sh, at.abs.wrapping_add(lost));
                } else {
                    self.state = State::Body(left - lost);
                }
                return;
            }
            State::ChunkData(left) if buffered.is_empty() && lost <= left => {
                self.mark_partial(sh);
                self.state = if lost == left {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left - lost)
                };
                return;
            }
            State::Head => !buffered.is_empty() || lost > 0,
            State::Body(left) => {
                // The body ended inside the lost bytes; what follows began
                // another message.
                self.mark_partial(sh);
                self.finish(sh, at.abs.wrapping_add(left));
                true
            }
            State::ChunkSize | State::ChunkData(_) | State::ChunkEnd | State::Trailer => {
                self.mark_partial(sh);
                self.finish(sh, at.abs.wrapping_add(buffered.len() as u64).wrapping_add(lost));
                false
            }
        };
        if new_lost {
            self.lost_message(sh, buffered, ts, lost);
        } else {
            self.doubt(sh);
        }
        self.msg = None;
        self.state = State::Resync;
        self.line_start = true;
    }

    fn pairer(sh: &mut Shared) -> &mut Pairer {
        &mut sh.pairer
    }

    fn pending(sh: &Shared) -> usize {
        sh.pairer.pending()
    }

    fn flush(&mut self, sh: &mut Shared, buffered: &[u8], at: At) {
        let end = at.abs.wrapping_add(buffered.len() as u64);
        match self.state {
            State::UntilClose => self.finish(sh, end),
            State::Body(_) | State::ChunkSize | State::ChunkData(_) | State::ChunkEnd | State::Trailer => {
                self.mark_partial(sh);
                self.finish(sh, end);
            }
            State::Head if !buffered.is_empty() => self.lost_message(sh, buffered, Some(at.ts), 0),
            _ => {}
        }
        self.msg = None;
        self.state = if sh.tunnel { State::Tunnel } else { State::Head };
        self.line_start = true;
    }
}

/// The headers the parser cares about.
#[derive(Default)]
struct Heads<'a> {
    host: Option<&'a [u8]>,
    content_length: Option<u64>,
    chunked: bool,
    /// An unparseable or conflicting Content-Length.
    bad: bool,
}

impl<'a> Heads<'a> {
    fn of(headers: &[httparse::Header<'a>]) -> Self {
        let mut h = Heads::default();
        for hd in headers {
            if hd.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(hd.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    Some(l) if h.content_length.is_none_or(|old| old == l) => h.content_length = Some(l),
                    _ => h.bad = true,
                }
            } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked is the last coding when present at all.
                let v = hd.value;
                h.chunked |= v.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
            } else if hd.name.eq_ignore_ascii_case("host") && h.host.is_none() {
                h.host = Some(hd.value);
            }
        }
        h
    }
}

/// Hex size at the start of a chunk-size line (extensions ignored).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut n: u64 = 0;
    let mut digits = 0;
    for &b in line {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b';' | b' ' | b'\t' => break,
            _ => return None,
        };
        n = n.checked_mul(16)?.checked_add(u64::from(d))?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// Method and path from the first line of a partial request head.
fn request_line(buf: &[u8]) -> Option<(Summary, Meta)> {
    let line = &buf[..find_nl(buf).unwrap_or(buf.len())];
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let method = parts.next()?;
    let path = parts.next()?;
    if !method.iter().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let meta = Meta {
        head: method == b"HEAD",
        connect: method == b"CONNECT",
        ..Meta::default()
    };
    let summary = Summary::HttpRequest {
        method: text(method),
        path: text(path),
        host: None,
        content_length: None,
    };
    Some((summary, meta))
}

/// Status from the first line of a partial response head.
fn status_line(buf: &[u8]) -> Option<Summary> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
    Some(Summary::HttpResponse {
        status,
        content_length: None,
    })
}

/// A parser pair for one HTTP connection.
pub(crate) fn duplex() -> Duplex<Side> {
    Duplex::new(
        Side::new(true),
        Side::new(false),
        Shared {
            pairer: Pairer::new(Proto::Http),
            tunnel: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::{testutil::*, Conn, Dir, Exchange};
    use super::*;
    use proptest::prelude::*;

    const C2S: &[u8] = include_bytes!("testdata/http_keepalive.c2s");
    const S2C: &[u8] = include_bytes!("testdata/http_keepalive.s2c");

    fn req(e: &Exchange) -> (&str, &str) {
        match &e.request {
            Some(Summary::HttpRequest { method, path, .. }) => (method, path),
            other => panic!("not a request: {other:?}"),
        }
    }

    fn status(e: &Exchange) -> u16 {
        match &e.response {
            Some(Summary::HttpResponse { status, .. }) => *status,
            other => panic!("not a response: {other:?}"),
        }
    }

    #[test]
    fn recorded_keepalive_session() {
        let out = assert_split_invariant(Proto::Http, C2S, S2C);
        let got: Vec<_> = out.iter().map(|e| (req(e).0, req(e).1, status(e), e.partial)).collect();
        assert_eq!(
            got,
            [
                ("GET", "/index.html", 200, false),
                ("GET", "/missing", 404, false),
                ("POST", "/api/items", 201, false),
                ("GET", "/chunked", 200, false),
                ("HEAD", "/", 200, false),
                ("GET", "/empty", 204, false),
            ]
        );
        assert_eq!(
            out[2].request,
            Some(Summary::HttpRequest {
                method: "POST".into(),
                path: "/api/items".into(),
                host: Some("127.0.0.1:18080".into()),
                content_length: Some(17),
            })
        );
        assert_eq!(
            out[0].response,
            Some(Summary::HttpResponse {
                status: 200,
                content_length: Some(69)
            })
        );
        // HEAD: Content-Length 39 but no body.
        assert_eq!(
            out[4].response,
            Some(Summary::HttpResponse {
                status: 200,
                content_length: Some(39)
            })
        );
        assert_eq!(
            out[3].response,
            Some(Summary::HttpResponse {
                status: 200,
                content_length: None
            })
        );
        // Wire sizes add up to the streams.
        assert_eq!(out.iter().map(|e| e.req_bytes).sum::<u64>(), C2S.len() as u64);
        assert_eq!(out.iter().map(|e| e.resp_bytes).sum::<u64>(), S2C.len() as u64);
    }

    #[test]
    fn timestamps_and_latency() {
        let out = run_steps(
            Proto::Http,
            &[
                (Dir::ToServer, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
                (Dir::ToClient, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"),
                (Dir::ToClient, b"cd"),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].req_ts_ns, out[0].resp_ts_ns, out[0].latency_ns()),
            (Some(0), Some(1000), Some(1000))
        );
        assert_eq!(out[0].resp_bytes, 42);
        assert!(!out[0].partial);
    }

    #[test]
    fn keepalive_three_requests_back_to_back() {
        let c2s = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nPOST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let s2c = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let out = assert_split_invariant(Proto::Http, c2s, s2c);
        let got: Vec<_> = out.iter().map(|e| (req(e).1, status(e), e.partial)).collect();
        assert_eq!(got, [("/1", 200, false), ("/2", 301, false), ("/3", 500, false)]);
        assert_eq!(out[2].req_bytes, 53);
    }

    #[test]
    fn chunked_request_and_interim_response() {
        let c2s = b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\n\r\n";
        let s2c = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";
        let out = assert_split_invariant(Proto::Http, c2s, s2c);
        let got: Vec<_> = out.iter().map(|e| (req(e).1, status(e), e.partial)).collect();
        assert_eq!(got, [("/up", 201, false), ("/after", 304, false)]);
        assert_eq!(out[0].req_bytes, 85);
    }

    #[test]
    fn http10_body_until_close() {
        let c2s = b"GET /old HTTP/1.0\r\n\r\n";
        let s2c = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nbody bytes until the end";
        let mut c = Conn::new(Proto::Http);
        assert!(c.feed(Dir::ToServer, 1, c2s).is_empty());
        assert!(c.feed(Dir::ToClient, 2, s2c).is_empty());
        let out = c.flush();
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0]), 200);
        assert_eq!(out[0].resp_bytes, s2c.len() as u64);
        assert!(!out[0].partial);
        assert_eq!(strip(out), strip(assert_split_invariant(Proto::Http, c2s, s2c)));
    }

    #[test]
    fn the_servers_fin_completes_a_close_delimited_response_at_once() {
        let c2s = b"GET /old HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n";
        let s2c = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nbody bytes until the end";
        let mut c = Conn::new(Proto::Http);
        assert!(c.feed(Dir::ToServer, 1, c2s).is_empty());
        assert!(c.end(Dir::ToServer).is_empty(), "the client's FIN ends no response");
        assert!(c.feed(Dir::ToClient, 2, s2c).is_empty());
        let out = c.end(Dir::ToClient);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((req(&out[0]).1, status(&out[0])), ("/old", 200));
        assert_eq!(out[0].resp_bytes, s2c.len() as u64);
        assert_eq!(out[0].latency_ns(), Some(1));
        assert!(!out[0].partial);
        // The server closed: the second request gets no answer on this
        // connection.
        assert_eq!(req(&out[1]).1, "/never");
        assert!(out[1].response.is_none() && out[1].partial);
        assert_eq!(c.pending(), 0);
        assert!(c.flush().is_empty(), "nothing is reported twice");

        // A response with a length is complete without the FIN; a body cut
        // short by the FIN is partial.
        let mut c = Conn::new(Proto::Http);
        c.feed(Dir::ToServer, 1, b"GET /a HTTP/1.1\r\n\r\n");
        let out = c.feed(Dir::ToClient, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(out.len(), 1);
        assert!(c.end(Dir::ToClient).is_empty());
        c.feed(Dir::ToServer, 3, b"GET /b HTTP/1.1\r\n\r\n");
        c.feed(Dir::ToClient, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
        let out = c.end(Dir::ToClient);
        assert_eq!(out.len(), 1);
        assert_eq!((req(&out[0]).1, status(&out[0]), out[0].partial), ("/b", 200, true));
    }

    #[test]
    fn flush_returns_pending_requests() {
        let mut c = Conn::new(Proto::Http);
        c.feed(
            Dir::ToServer,
            5,
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HT",
        );
        assert_eq!(c.pending(), 2);
        let out = c.flush();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| e.partial && e.response.is_none()));
        assert_eq!(req(&out[2]), ("GET", "/c"));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn gap_in_body_keeps_framing() {
        let mut c = Conn::new(Proto::Http);
        c.feed(Dir::ToServer, 1, b"GET /big HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
        let mut out = c.feed(
            Dir::ToClient,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\nxxxx",
        );
        c.gap(Dir::ToClient, 9000);
        out.extend(c.feed(Dir::ToClient, 3, &[b'y'; 996]));
        out.extend(c.feed(Dir::ToClient, 4, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"));
        let got: Vec<_> = out.iter().map(|e| (req(e).1, status(e), e.partial)).collect();
        assert_eq!(got, [("/big", 200, true), ("/next", 404, false)]);
        assert_eq!(out[0].resp_bytes, 42 + 10000);
    }

    #[test]
    fn gap_in_head_resyncs() {
        let mut c = Conn::new(Proto::Http);
        // Client: the second request's head is cut by a gap.
        let mut out = c.feed(
            Dir::ToServer,
            1,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\nX-Lo",
        );
        c.gap(Dir::ToServer, 100);
        out.extend(c.feed(Dir::ToServer, 2, b"ng: yes\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"));
        // Server: the first response is cut in its head.
        out.extend(c.feed(Dir::ToClient, 3, b"HTTP/1.1 200 OK\r\nContent-Le"));
        c.gap(Dir::ToClient, 50);
        out.extend(c.feed(Dir::ToClient, 4, b"HTTP/1.1 201 OK\r\nContent-Length: 1\r\n\r\nx"));
        out.extend(c.feed(Dir::ToClient, 5, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n"));
        // The queue drained: pairs are trusted again.
        out.extend(c.feed(Dir::ToServer, 6, b"GET /4 HTTP/1.1\r\n\r\n"));
        out.extend(c.feed(Dir::ToClient, 7, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n"));
        let got: Vec<_> = out.iter().map(|e| (req(e).1, e.response.clone(), e.partial)).collect();
        assert_eq!(
            got,
            [
                (
                    "/1",
                    Some(Summary::HttpResponse {
                        status: 200,
                        content_length: None
                    }),
                    true
                ),
                (
                    "/2",
                    Some(Summary::HttpResponse {
                        status: 201,
                        content_length: Some(1)
                    }),
                    true
                ),
                // Paired right, but after a gap while the queue was not empty.
                (
                    "/3",
                    Some(Summary::HttpResponse {
                        status: 202,
                        content_length: Some(0)
                    }),
                    true
                ),
                (
                    "/4",
                    Some(Summary::HttpResponse {
                        status: 203,
                        content_length: Some(0)
                    }),
                    false
                ),
            ]
        );
    }

    #[test]
    fn gap_before_anything_then_recovers() {
        let mut c = Conn::new(Proto::Http);
        c.gap(Dir::ToServer, 10);
        c.gap(Dir::ToClient, 10);
        let mut out = c.feed(Dir::ToServer, 1, b"ody\r\nGET /ok HTTP/1.1\r\n\r\n");
        out.extend(c.feed(Dir::ToClient, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        out.extend(c.feed(Dir::ToClient, 3, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        // The client gap lost a request whose response the server gap lost:
        // nothing is reported for those. The recovered request takes the
        // first response; the second has no request.
        assert_eq!(out.len(), 2);
        assert_eq!((req(&out[0]), out[0].partial), (("GET", "/ok"), false));
        assert!(out[1].request.is_none() && out[1].partial);
    }

    #[test]
    fn upgrade_becomes_tunnel() {
        let c2s = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
        let s2c = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hiGET / HTTP/1.1\r\n\r\n";
        let out = run_chunked(Proto::Http, c2s, s2c, usize::MAX);
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0]), 101);
        assert!(!out[0].partial);
    }

    #[test]
    fn garbage_is_not_http() {
        let mut c = Conn::new(Proto::Http);
        let out = c.feed(Dir::ToServer, 1, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n");
        assert!(out.is_empty());
        let out = c.feed(Dir::ToClient, 2, b"\x16\x03\x03\x00\x5d\x02\x00");
        assert!(out.is_empty());
        assert_eq!(c.pending(), 0);
        assert!(c.flush().is_empty());
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut c = Conn::new(Proto::Http);
        c.feed(
            Dir::ToServer,
            1,
            b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nabc",
        );
        c.gap(Dir::ToServer, u64::MAX);
        c.gap(Dir::ToServer, u64::MAX);
        c.feed(
            Dir::ToClient,
            2,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
        );
        c.gap(Dir::ToClient, u64::MAX);
        c.feed(Dir::ToClient, 3, b"HTTP/1.1 200 OK\r\n\r\n");
        let out = c.flush();
        assert!(out.iter().all(|e| e.partial));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"FF;name=val\r"), Some(255));
        assert_eq!(chunk_size(b"\r"), None);
        assert_eq!(chunk_size(b"zz\r"), None);
        assert_eq!(chunk_size(b"ffffffffffffffffff\r"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn fuzz_never_panics(
            ops in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), prop_oneof![0u64..3000, any::<u64>()], 0u8..10),
                0..40,
            ),
        ) {
            crate::l7::testutil::fuzz_ops(Proto::Http, ops)?;
        }

        #[test]
        fn fuzz_mutated_session(
            cuts in proptest::collection::vec(0usize..2000, 0..12),
            flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..4),
            gaps in proptest::collection::vec((0usize..16, prop_oneof![0u64..400, any::<u64>()]), 0..3),
        ) {
            fuzz_session(Proto::Http, C2S, S2C, &cuts, &flips, &gaps);
        }
    }
}
