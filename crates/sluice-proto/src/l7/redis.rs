//! Redis RESP2, tolerating RESP3 types: client commands are arrays of bulk
//! strings (or inline commands, one line of words), replies are any RESP
//! value. Values are parsed as a stream of lines with a stack of element
//! counts for nested aggregates, so a reply is complete only when its last
//! nested element is; bulk strings are skipped without buffering (the first
//! few elements of a command are kept, cut to [`MAX_TEXT`]).
//!
//! Commands pair FIFO with replies. RESP3 out-of-band pushes and pub/sub
//! messages are not replies and are dropped; each (P|S)(UN)SUBSCRIBE pairs
//! with its first confirmation and absorbs the others. After lost bytes the
//! parser resyncs on the next line start that looks like a value (`*N\r\n$`
//! for commands).

use super::{
    find_nl,
    pair::{Half, Meta, Pairer},
    text, At, Duplex, Parser, Proto, Step, Summary, MAX_TEXT,
};

/// Deepest nesting of aggregates accepted.
const MAX_DEPTH: usize = 64;
/// Command elements kept (name, key, and two more for EVAL-style commands).
const KEEP: u64 = 4;
/// Longest command name kept.
const MAX_NAME: usize = 64;
/// Bytes kept of the first element of a reply aggregate.
const FIRST: usize = 12;
/// Longest line a resync looks at.
const MAX_RESYNC_LINE: usize = 4096;

/// Commands whose second element is not a key.
const NO_KEY: &[&str] = &[
    "ACL",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DEBUG",
    "DISCARD",
    "ECHO",
    "EXEC",
    "FAILOVER",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "HELLO",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LOLWUT",
    "MODULE",
    "MONITOR",
    "MULTI",
    "PING",
    "PSYNC",
    "PUBSUB",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "REPLCONF",
    "REPLICAOF",
    "RESET",
    "ROLE",
    "SAVE",
    "SCAN",
    "SCRIPT",
    "SELECT",
    "SHUTDOWN",
    "SLAVEOF",
    "SLOWLOG",
    "SWAPDB",
    "SYNC",
    "TIME",
    "UNWATCH",
    "WAIT",
    "WAITAOF",
    "XREAD",
    "XREADGROUP",
];

const SUBSCRIBES: &[&str] = &[
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
];

/// Does `first` start like a RESP command (`*N\r\n$`)?
pub fn is_command_start(first: &[u8]) -> bool {
    command_like(first) == Like::Yes
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Like {
    Yes,
    Maybe,
    No,
}

/// `*<digits>\r\n$`, or a prefix of it.
fn command_like(d: &[u8]) -> Like {
    let Some(rest) = d.strip_prefix(b"*") else {
        return if d.is_empty() { Like::Maybe } else { Like::No };
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 10 {
        return Like::No;
    }
    let rest = &rest[digits..];
    if rest.is_empty() {
        return Like::Maybe;
    }
    if digits == 0 {
        return Like::No;
    }
    prefix(rest, b"\r\n$")
}

fn prefix(data: &[u8], pat: &[u8]) -> Like {
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

/// A complete line that could start a reply.
fn reply_like(d: &[u8]) -> Like {
    let Some(&t) = d.first() else { return Like::Maybe };
    if !b"+-:$*_,#!=(%~>|".contains(&t) {
        return Like::No;
    }
    let window = &d[..d.len().min(MAX_RESYNC_LINE)];
    let Some(i) = find_nl(window) else {
        return if d.len() < MAX_RESYNC_LINE {
            Like::Maybe
        } else {
            Like::No
        };
    };
    let Some(line) = d[1..i].strip_suffix(b"\r") else {
        return Like::No;
    };
    let ok = match t {
        b'+' | b'-' => line.iter().all(|&b| b >= 0x20 || b == b'\t'),
        b'_' => line.is_empty(),
        b'#' => line == b"t" || line == b"f",
        b',' => !line.is_empty() && line.iter().all(|b| b"0123456789.-+eEinfa".contains(b)),
        _ => parse_int(line).is_some(),
    };
    if ok {
        Like::Yes
    } else {
        Like::No
    }
}

fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a type line.
    Line,
    /// Inside bulk string data: bytes left.
    Bulk(u64),
    /// The CRLF after bulk data.
    Crlf,
    /// Looking for the next message start.
    Resync,
}

/// Where the bulk string being read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Skip,
    /// A command element.
    Part,
    /// The first element of a reply aggregate.
    First,
    /// The text of a blob error.
    Error,
}

/// An aggregate being read: elements left.
#[derive(Clone, Copy, Debug)]
struct Frame {
    left: u64,
    /// A RESP3 attribute, which precedes a value rather than being one.
    attr: bool,
}

/// The message being read.
struct Msg {
    start: u64,
    ts: u64,
    partial: bool,
    kind: Option<&'static str>,
    error: Option<String>,
    /// Client: the first elements (name, key, and for EVAL-style commands
    /// two more, at most [`KEEP`]).
    parts: Vec<String>,
    /// Server: the start of the first element of a top-level aggregate, to
    /// tell pub/sub pushes.
    first: [u8; FIRST],
    first_len: u8,
    /// Elements of the top-level aggregate.
    total: u64,
    /// Arguments of an inline command.
    inline_args: Option<usize>,
}

impl Msg {
    fn keep(&mut self, target: Target, b: &[u8]) {
        match target {
            Target::Part => self.parts.push(text(b)),
            Target::First => {
                let n = b.len().min(FIRST);
                self.first[..n].copy_from_slice(&b[..n]);
                self.first_len = n as u8;
            }
            Target::Error => self.error = Some(text(b)),
            Target::Skip => {}
        }
    }
}

/// State shared by both directions.
pub(crate) struct Shared {
    pairer: Pairer,
    /// A SUBSCRIBE was seen: arrays starting with `message` are pushes.
    pubsub: bool,
    /// Subscribe confirmations still to absorb for the last SUBSCRIBE.
    absorb: u64,
}

/// One direction of a Redis connection.
pub(crate) struct Side {
    client: bool,
    state: State,
    stack: Vec<Frame>,
    msg: Option<Msg>,
    cap: Vec<u8>,
    target: Target,
    line_start: bool,
}

impl Side {
    fn new(client: bool) -> Self {
        Side {
            client,
            state: State::Line,
            stack: Vec::new(),
            msg: None,
            cap: Vec::new(),
            target: Target::Skip,
            line_start: true,
        }
    }

    /// Index of the next element of the top-level aggregate, if that is
    /// where the parser is.
    fn elem_index(&self) -> Option<u64> {
        match (self.stack.as_slice(), &self.msg) {
            ([top], Some(m)) if !top.attr => Some(m.total.saturating_sub(top.left)),
            _ => None,
        }
    }

    /// Where the next element goes, if it is kept.
    fn wants(&self) -> Target {
        match (self.elem_index(), &self.msg) {
            (Some(i), Some(m)) if self.client => {
                let more = m.parts.first().is_some_and(|name| needs_more(name));
                if i < 2 || (i < KEEP && more) {
                    Target::Part
                } else {
                    Target::Skip
                }
            }
            (Some(0), _) => Target::First,
            _ => Target::Skip,
        }
    }

    fn line(&mut self, sh: &mut Shared, data: &[u8], at: At) -> Step {
        let Some(i) = find_nl(data) else { return Step::Need };
        let n = i + 1;
        let line = &data[..i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.msg.is_none() {
            if line.is_empty() {
                return Step::Eat(n);
            }
            self.msg = Some(Msg {
                start: at.abs,
                ts: at.ts,
                partial: false,
                kind: None,
                error: None,
                parts: Vec::new(),
                first: [0; FIRST],
                first_len: 0,
                total: 0,
                inline_args: None,
            });
            if self.client && line[0] != b'*' {
                return self.inline(sh, line, n, at);
            }
        }
        let Some((&t, rest)) = line.split_first() else {
            return self.error(sh, at);
        };
        let top = self.stack.is_empty();
        match t {
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let Some(cnt) = parse_int(rest) else {
                    return self.error(sh, at);
                };
                if top && self.client && cnt <= 0 {
                    // An empty command: Redis ignores it.
                    self.msg = None;
                    return Step::Eat(n);
                }
                if top && t != b'|' {
                    let kind = match t {
                        _ if cnt < 0 => "null",
                        b'*' => "array",
                        b'%' => "map",
                        b'~' => "set",
                        _ => "push",
                    };
                    self.set_kind(kind);
                }
                if cnt <= 0 {
                    return self.leaf(sh, at.abs.wrapping_add(n as u64), n);
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.error(sh, at);
                }
                let left = if t == b'%' || t == b'|' {
                    (cnt as u64).saturating_mul(2)
                } else {
                    cnt as u64
                };
                if top {
                    if let Some(m) = &mut self.msg {
                        m.total = left;
                    }
                }
                self.stack.push(Frame { left, attr: t == b'|' });
                Step::Eat(n)
            }
            b'$' | b'=' | b'!' => {
                let Some(len) = parse_int(rest) else {
                    return self.error(sh, at);
                };
                if top {
                    self.set_kind(match t {
                        _ if len < 0 => "null",
                        b'$' => "bulk",
                        b'=' => "verbatim",
                        _ => "error",
                    });
                }
                if len < 0 {
                    return self.leaf(sh, at.abs.wrapping_add(n as u64), n);
                }
                self.target = if top && t == b'!' { Target::Error } else { self.wants() };
                self.cap.clear();
                self.state = if len == 0 { State::Crlf } else { State::Bulk(len as u64) };
                Step::Eat(n)
            }
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                if top {
                    self.set_kind(match t {
                        b'+' => "simple",
                        b'-' => "error",
                        b':' => "integer",
                        b'_' => "null",
                        b',' => "double",
                        b'#' => "boolean",
                        _ => "bignum",
                    });
                    if t == b'-' {
                        if let Some(m) = &mut self.msg {
                            m.error = Some(text(rest));
                        }
                    }
                } else {
                    let target = self.wants();
                    if let Some(m) = &mut self.msg {
                        m.keep(target, rest);
                    }
                }
                self.leaf(sh, at.abs.wrapping_add(n as u64), n)
            }
            _ => self.error(sh, at),
        }
    }

    fn set_kind(&mut self, kind: &'static str) {
        if let Some(m) = &mut self.msg {
            if m.kind.is_none() || kind == "null" {
                m.kind = Some(kind);
            }
        }
    }

    fn inline(&mut self, sh: &mut Shared, line: &[u8], n: usize, at: At) -> Step {
        let mut words = line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
        let Some(name) = words.next() else {
            self.msg = None;
            return Step::Eat(n);
        };
        if !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-' || *b == b'|')
        {
            return self.error(sh, at);
        }
        let mut parts = vec![text(name)];
        let keep = if needs_more(&parts[0]) { KEEP as usize } else { 2 };
        let mut args = 0;
        for w in words {
            if parts.len() < keep {
                parts.push(text(w));
            }
            args += 1;
        }
        if let Some(m) = &mut self.msg {
            m.parts = parts;
            m.inline_args = Some(args);
        }
        self.complete(sh, at.abs.wrapping_add(n as u64));
        Step::Eat(n)
    }

    /// A value without children ended at `end`.
    fn leaf(&mut self, sh: &mut Shared, end: u64, n: usize) -> Step {
        if self.elem_done() {
            self.complete(sh, end);
        }
        Step::Eat(n)
    }

    /// Counts one finished element; true when the message is complete.
    fn elem_done(&mut self) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else { return true };
            top.left = top.left.saturating_sub(1);
            if top.left > 0 {
                return false;
            }
            let f = self.stack.pop();
            if f.is_some_and(|f| f.attr) {
                // The attribute is done; the value it annotates follows.
                return false;
            }
        }
    }

    fn bulk_done(&mut self) {
        if let Some(m) = &mut self.msg {
            m.keep(self.target, &self.cap);
        }
        self.cap.clear();
        self.target = Target::Skip;
    }

    /// The message ended at `end`: queue the command or pair the reply.
    fn complete(&mut self, sh: &mut Shared, end: u64) {
        self.stack.clear();
        self.state = State::Line;
        let Some(m) = self.msg.take() else { return };
        let bytes = end.wrapping_sub(m.start);
        if self.client {
            let mut parts = m.parts;
            let Some(name) = parts.first_mut() else {
                let half = Half {
                    summary: None,
                    ts: Some(m.ts),
                    bytes,
                    partial: true,
                };
                sh.pairer.request(half, Meta::default());
                return;
            };
            let mut command = std::mem::take(name);
            command.make_ascii_uppercase();
            truncate(&mut command, MAX_NAME);
            let args = m.inline_args.unwrap_or((m.total as usize).saturating_sub(1));
            let key = key_index(&command, &parts)
                .and_then(|i| parts.get_mut(i))
                .map(std::mem::take);
            let subscribe = SUBSCRIBES.contains(&command.as_str());
            sh.pubsub |= subscribe;
            let meta = Meta {
                subscribe,
                args: args.min(u32::MAX as usize) as u32,
                ..Meta::default()
            };
            let summary = Summary::RedisCommand { command, key, args };
            sh.pairer.request(
                Half {
                    summary: Some(summary),
                    ts: Some(m.ts),
                    bytes,
                    partial: m.partial,
                },
                meta,
            );
        } else {
            let Some(kind) = m.kind else {
                if sh.pairer.pending() > 0 {
                    sh.pairer.response(Half {
                        summary: None,
                        ts: Some(m.ts),
                        bytes,
                        partial: true,
                    });
                }
                return;
            };
            let first = &m.first[..m.first_len as usize];
            let aggregate = kind == "array" || kind == "push";
            let confirm = aggregate && SUBSCRIBES.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(first));
            if confirm {
                if sh.absorb > 0 {
                    sh.absorb -= 1;
                    return;
                }
                match sh.pairer.head() {
                    Some(h) if h.subscribe => {
                        // One confirmation per channel; without channels
                        // (UNSUBSCRIBE all), as many as there were.
                        sh.absorb = if h.args == 0 { u64::MAX } else { u64::from(h.args) - 1 };
                    }
                    _ => return,
                }
            } else {
                sh.absorb = 0;
                let message = [&b"message"[..], b"pmessage", b"smessage"]
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(first));
                if kind == "push" || (sh.pubsub && aggregate && message) {
                    return;
                }
            }
            let summary = Summary::RedisReply {
                kind: kind.to_string(),
                error: m.error,
            };
            sh.pairer.response(Half {
                summary: Some(summary),
                ts: Some(m.ts),
                bytes,
                partial: m.partial,
            });
        }
    }

    /// Not RESP: what was read of the message is returned partial (or
    /// counted as a lost message) and the parser resyncs after this line.
    fn error(&mut self, sh: &mut Shared, at: At) -> Step {
        if let Some(m) = &mut self.msg {
            m.partial = true;
        }
        if self.client {
            sh.pairer.doubt_next();
        }
        self.complete(sh, at.abs);
        if !self.client {
            sh.pairer.doubt_all();
        }
        self.state = State::Resync;
        self.line_start = false;
        Step::Eat(0)
    }

    fn start_like(&self, d: &[u8]) -> Like {
        if self.client {
            command_like(d)
        } else {
            reply_like(d)
        }
    }

    fn resync(&mut self, data: &[u8]) -> Step {
        let mut p = if self.line_start {
            Some(0)
        } else {
            find_nl(data).map(|i| i + 1)
        };
        while let Some(pos) = p {
            match self.start_like(&data[pos..]) {
                Like::Yes => {
                    self.state = State::Line;
                    self.stack.clear();
                    self.msg = None;
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

    /// Something started in `buffered` and was lost.
    fn lost_message(&mut self, sh: &mut Shared, ts: Option<u64>, bytes: u64) {
        if self.client {
            sh.pairer.request(
                Half {
                    summary: None,
                    ts,
                    bytes,
                    partial: true,
                },
                Meta::default(),
            );
        } else if sh.pairer.pending() > 0 {
            sh.pairer.response(Half {
                summary: None,
                ts,
                bytes,
                partial: true,
            });
        }
    }

    fn reset(&mut self) {
        self.stack.clear();
        self.msg = None;
        self.cap.clear();
        self.target = Target::Skip;
    }
}

impl Parser for Side {
    type Shared = Shared;

    fn step(&mut self, sh: &mut Shared, data: &[u8], at: At) -> Step {
        match self.state {
            State::Line => self.line(sh, data, at),
            State::Bulk(left) => {
                let k = left.min(data.len() as u64);
                if self.target != Target::Skip {
                    let max = if self.target == Target::First { FIRST } else { MAX_TEXT };
                    let room = max.saturating_sub(self.cap.len());
                    self.cap.extend_from_slice(&data[..(k as usize).min(room)]);
                }
                self.state = if k == left { State::Crlf } else { State::Bulk(left - k) };
                Step::Eat(k as usize)
            }
            State::Crlf => match data {
                [b'\r'] => Step::Need,
                [b'\r', b'\n', ..] => {
                    self.state = State::Line;
                    self.bulk_done();
                    self.leaf(sh, at.abs.wrapping_add(2), 2)
                }
                _ => self.error(sh, at),
            },
            State::Resync => self.resync(data),
        }
    }

    fn gap(&mut self, sh: &mut Shared, buffered: &[u8], at: At, lost: u64) {
        match self.state {
            State::Resync => {
                self.line_start = true;
                return;
            }
            State::Bulk(left) if buffered.is_empty() && lost <= left => {
                if let Some(m) = &mut self.msg {
                    m.partial = true;
                }
                self.state = if lost == left {
                    State::Crlf
                } else {
                    State::Bulk(left - lost)
                };
                return;
            }
            _ => {}
        }
        let end = at.abs.wrapping_add(buffered.len() as u64).wrapping_add(lost);
        if self.client {
            sh.pairer.doubt_next();
        }
        if let Some(m) = &mut self.msg {
            m.partial = true;
            self.complete(sh, end);
        } else if !buffered.is_empty() || lost > 0 {
            let ts = (!buffered.is_empty()).then_some(at.ts);
            self.lost_message(sh, ts, end.wrapping_sub(at.abs));
        }
        if !self.client {
            sh.pairer.doubt_all();
        }
        self.reset();
        self.state = State::Resync;
        self.line_start = true;
    }

    fn flush(&mut self, sh: &mut Shared, buffered: &[u8], at: At) {
        let end = at.abs.wrapping_add(buffered.len() as u64);
        if let Some(m) = &mut self.msg {
            m.partial = true;
            self.complete(sh, end);
        } else if !buffered.is_empty() && self.state != State::Resync {
            self.lost_message(sh, Some(at.ts), buffered.len() as u64);
        }
        self.reset();
        self.state = State::Line;
        self.line_start = true;
    }

    fn pairer(sh: &mut Shared) -> &mut Pairer {
        &mut sh.pairer
    }

    fn pending(sh: &Shared) -> usize {
        sh.pairer.pending()
    }
}

/// Commands whose key is not the second element.
const KEY_LATER: &[&str] = &[
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
    "OBJECT",
    "BITOP",
    "MEMORY",
];

/// Does a command need its third and fourth elements to find its key?
fn needs_more(name: &str) -> bool {
    KEY_LATER.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Element holding the first key of a command (simple rules: the second
/// element unless the command has none; EVAL-style commands name their keys
/// after numkeys).
fn key_index(command: &str, parts: &[String]) -> Option<usize> {
    match command {
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            let numkeys: u64 = parts.get(2)?.parse().ok()?;
            (numkeys > 0).then_some(3)
        }
        "OBJECT" | "BITOP" => Some(2),
        "MEMORY" => parts
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case("usage"))
            .then_some(2),
        _ if NO_KEY.contains(&command) => None,
        _ => Some(1),
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut n = max;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
}

/// A parser pair for one Redis connection.
pub(crate) fn duplex() -> Duplex<Side> {
    Duplex::new(
        Side::new(true),
        Side::new(false),
        Shared {
            pairer: Pairer::new(Proto::Redis),
            pubsub: false,
            absorb: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::{testutil::*, Conn, Dir, Exchange, MAX_BUFFER, MAX_PENDING};
    use super::*;
    use proptest::prelude::*;

    const C2S: &[u8] = include_bytes!("testdata/redis_pipeline.c2s");
    const S2C: &[u8] = include_bytes!("testdata/redis_pipeline.s2c");

    fn cmd(e: &Exchange) -> (String, Option<String>, usize) {
        match &e.request {
            Some(Summary::RedisCommand { command, key, args }) => (command.clone(), key.clone(), *args),
            other => panic!("not a command: {other:?}"),
        }
    }

    fn reply(e: &Exchange) -> (String, Option<String>) {
        match &e.response {
            Some(Summary::RedisReply { kind, error }) => (kind.clone(), error.clone()),
            other => panic!("not a reply: {other:?}"),
        }
    }

    fn resp(parts: &[&str]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            v.extend(format!("${}\r\n{}\r\n", p.len(), p).bytes());
        }
        v
    }

    #[test]
    fn recorded_pipeline_session() {
        let out = assert_split_invariant(Proto::Redis, C2S, S2C);
        let got: Vec<_> = out
            .iter()
            .map(|e| {
                let (c, k, _) = cmd(e);
                let (kind, err) = reply(e);
                (c, k, kind, err, e.partial)
            })
            .collect();
        let s = |x: &str| Some(x.to_string());
        let want = [
            ("SET", s("user:1"), "simple", None),
            ("GET", s("user:1"), "bulk", None),
            ("INCR", s("visits"), "integer", None),
            ("INCR", s("visits"), "integer", None),
            ("GET", s("nosuchkey"), "null", None),
            ("HSET", s("h:1"), "integer", None),
            ("HGETALL", s("h:1"), "array", None),
            ("LPUSH", s("list:1"), "integer", None),
            ("LRANGE", s("list:1"), "array", None),
            ("DEL", s("user:1"), "integer", None),
            ("PING", None, "simple", None),
            (
                "INCR",
                s("h:1"),
                "error",
                s("WRONGTYPE Operation against a key holding the wrong kind of value"),
            ),
            ("PING", None, "simple", None),
            ("MULTI", None, "simple", None),
            ("LRANGE", s("list:1"), "simple", None),
            ("INCR", s("visits"), "simple", None),
            ("EXEC", None, "array", None),
            (
                "NOSUCHCMD",
                s("x"),
                "error",
                s("ERR unknown command 'NOSUCHCMD', with args beginning with: 'x' "),
            ),
            ("CONFIG", None, "array", None),
            ("SET", s("big"), "simple", None),
            ("GET", s("big"), "bulk", None),
            ("QUIT", None, "simple", None),
        ];
        let want: Vec<_> = want
            .into_iter()
            .map(|(c, k, kind, err)| (c.to_string(), k, kind.to_string(), err, false))
            .collect();
        assert_eq!(got, want);
        assert_eq!(cmd(&out[5]).2, 5);
        assert_eq!(cmd(&out[12]).2, 0);
        assert_eq!(out.iter().map(|e| e.req_bytes).sum::<u64>(), C2S.len() as u64);
        assert_eq!(out.iter().map(|e| e.resp_bytes).sum::<u64>(), S2C.len() as u64);
    }

    #[test]
    fn pipeline_of_ten() {
        let mut c2s = Vec::new();
        let mut s2c = Vec::new();
        for i in 0..10 {
            c2s.extend(resp(&["SET", &format!("k{i}"), "v"]));
            s2c.extend(b"+OK\r\n");
        }
        let out = assert_split_invariant(Proto::Redis, &c2s, &s2c);
        assert_eq!(out.len(), 10);
        for (i, e) in out.iter().enumerate() {
            assert_eq!(cmd(e), ("SET".into(), Some(format!("k{i}")), 2));
            assert_eq!(reply(e), ("simple".into(), None));
            assert!(!e.partial);
        }
    }

    #[test]
    fn nested_and_resp3_replies() {
        let c2s = [
            resp(&["EXEC"]),
            resp(&["HELLO", "3"]),
            resp(&["HGETALL", "h"]),
            resp(&["GET", "k"]),
        ]
        .concat();
        let s2c = b"*3\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*0\r\n*-1\r\n\
%1\r\n+server\r\n+redis\r\n\
|1\r\n+ttl\r\n:3\r\n~2\r\n,1.5\r\n#t\r\n\
>3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n_\r\n\
!11\r\nERR failure\r\n";
        let out = assert_split_invariant(Proto::Redis, &c2s, s2c);
        let got: Vec<_> = out.iter().map(|e| (cmd(e).0, reply(e))).collect();
        assert_eq!(
            got,
            [
                ("EXEC".to_string(), ("array".to_string(), None)),
                ("HELLO".to_string(), ("map".to_string(), None)),
                ("HGETALL".to_string(), ("set".to_string(), None)),
                (
                    "GET".to_string(),
                    ("error".to_string(), Some("ERR failure".to_string()))
                ),
            ]
        );
        assert!(out.iter().all(|e| !e.partial));
    }

    #[test]
    fn keys_of_commands() {
        let k = |parts: &[&str]| {
            let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            key_index(&parts[0].to_ascii_uppercase(), &parts).and_then(|i| parts.get(i).cloned())
        };
        assert_eq!(k(&["get", "a"]), Some("a".into()));
        assert_eq!(k(&["CONFIG", "GET", "x"]), None);
        assert_eq!(k(&["EVAL", "return 1", "1", "key1"]), Some("key1".into()));
        assert_eq!(k(&["EVAL", "return 1", "0"]), None);
        assert_eq!(k(&["PING"]), None);
        assert_eq!(k(&["DEL"]), None);
        assert_eq!(k(&["OBJECT", "ENCODING", "o"]), Some("o".into()));
    }

    #[test]
    fn big_value_is_skipped_not_buffered() {
        let mut c = Conn::new(Proto::Redis);
        let big = vec![b'z'; 1 << 20];
        let mut c2s = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", big.len()).into_bytes();
        c2s.extend(&big);
        c2s.extend(b"\r\n");
        let mut s2c = format!("${}\r\n", big.len()).into_bytes();
        s2c.extend(&big);
        s2c.extend(b"\r\n");
        let mut out = Vec::new();
        for ch in c2s.chunks(1448) {
            out.extend(c.feed(Dir::ToServer, 1, ch));
            assert!(c.buffered() < 64);
        }
        for ch in s2c.chunks(1448) {
            out.extend(c.feed(Dir::ToClient, 2, ch));
            assert!(c.buffered() < 64);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(cmd(&out[0]), ("SET".into(), Some("big".into()), 2));
        assert_eq!(reply(&out[0]), ("bulk".into(), None));
        assert_eq!(
            (out[0].req_bytes, out[0].resp_bytes),
            (c2s.len() as u64, s2c.len() as u64)
        );
    }

    #[test]
    fn gap_inside_bulk_keeps_framing() {
        let mut c = Conn::new(Proto::Redis);
        let mut out = c.feed(Dir::ToServer, 1, &[resp(&["GET", "a"]), resp(&["GET", "b"])].concat());
        out.extend(c.feed(Dir::ToClient, 2, b"$5000\r\nabc"));
        c.gap(Dir::ToClient, 4000);
        out.extend(c.feed(Dir::ToClient, 3, &[b'x'; 997]));
        out.extend(c.feed(Dir::ToClient, 4, b"\r\n:7\r\n"));
        let got: Vec<_> = out.iter().map(|e| (cmd(e).1, reply(e).0, e.partial)).collect();
        assert_eq!(
            got,
            [
                (Some("a".into()), "bulk".into(), true),
                (Some("b".into()), "integer".into(), false)
            ]
        );
    }

    #[test]
    fn gap_in_lines_resyncs() {
        let mut c = Conn::new(Proto::Redis);
        let mut out = c.feed(Dir::ToServer, 1, &resp(&["GET", "a"]));
        out.extend(c.feed(Dir::ToServer, 2, b"*2\r\n$3\r\nGE"));
        c.gap(Dir::ToServer, 20);
        out.extend(c.feed(Dir::ToServer, 3, b"y\r\n$1\r\nb\r\n"));
        out.extend(c.feed(Dir::ToServer, 4, &resp(&["GET", "c"])));
        out.extend(c.feed(Dir::ToClient, 5, b"$1\r\nA\r\n*3\r\n:1\r\n"));
        c.gap(Dir::ToClient, 30);
        out.extend(c.feed(Dir::ToClient, 6, b"\r\n:2\r\n"));
        out.extend(c.feed(Dir::ToClient, 7, b"+C\r\n"));
        // Recovered: a clean exchange once the queue drained.
        out.extend(c.feed(Dir::ToServer, 8, &resp(&["INCR", "d"])));
        out.extend(c.feed(Dir::ToClient, 9, b":1\r\n"));
        let got: Vec<_> = out
            .iter()
            .map(|e| {
                let c = e.request.as_ref().map(|_| cmd(e).1);
                (c, e.response.as_ref().map(|_| reply(e).0), e.partial)
            })
            .collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            got,
            [
                (Some(s("a")), s("bulk"), false),
                // The lost command got the array the server gap cut.
                (None, s("array"), true),
                // The ":2" after the server gap is taken for the next reply.
                (Some(s("c")), s("integer"), true),
                (None, s("simple"), true),
                (Some(s("d")), s("integer"), false),
            ]
        );
    }

    #[test]
    fn inline_and_garbage() {
        let c2s = b"PING\r\n\r\nSET  a   b\n\x00\x01\x02\r\n*1\r\n$4\r\nPING\r\n";
        let s2c = b"+PONG\r\n+OK\r\n-ERR junk\r\n+PONG\r\n";
        let out = run_chunked(Proto::Redis, c2s, s2c, usize::MAX);
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.request.as_ref().map(|_| cmd(e)), reply(e).0, e.partial))
            .collect();
        assert_eq!(
            got,
            [
                (Some(("PING".into(), None, 0)), "simple".to_string(), false),
                (Some(("SET".into(), Some("a".into()), 2)), "simple".to_string(), false),
                (None, "error".to_string(), true),
                (Some(("PING".into(), None, 0)), "simple".to_string(), true),
            ]
        );
    }

    #[test]
    fn pubsub() {
        let c2s = [resp(&["SUBSCRIBE", "a", "b"]), resp(&["PING"])].concat();
        let s2c = [
            resp(&["subscribe", "a", "1"]),
            resp(&["subscribe", "b", "2"]),
            resp(&["message", "a", "hello"]),
            resp(&["pong", ""]),
        ]
        .concat();
        let out = assert_split_invariant(Proto::Redis, &c2s, &s2c);
        let got: Vec<_> = out.iter().map(|e| (cmd(e).0, reply(e).0, e.partial)).collect();
        assert_eq!(
            got,
            [
                ("SUBSCRIBE".into(), "array".to_string(), false),
                ("PING".into(), "array".into(), false)
            ]
        );
    }

    #[test]
    fn pending_capped() {
        let mut c = Conn::new(Proto::Redis);
        let many: Vec<u8> = (0..MAX_PENDING + 10).flat_map(|_| resp(&["PING"])).collect();
        let out = c.feed(Dir::ToServer, 1, &many);
        assert_eq!(out.len(), 10);
        assert_eq!(c.pending(), MAX_PENDING);
        assert_eq!(c.flush().len(), MAX_PENDING);
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
            crate::l7::testutil::fuzz_ops(Proto::Redis, ops)?;
        }

        #[test]
        fn fuzz_resp_like_bytes(
            data in proptest::collection::vec(
                prop_oneof![
                    Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()),
                    Just(b"3".to_vec()), Just(b"-1".to_vec()), Just(b"+OK".to_vec()),
                    Just(b"%".to_vec()), Just(b"|".to_vec()), Just(b">".to_vec()),
                    proptest::collection::vec(any::<u8>(), 1..4),
                ],
                0..200,
            ),
            chunk in 1usize..64,
        ) {
            let data = data.concat();
            let mut c = Conn::new(Proto::Redis);
            for (i, ch) in data.chunks(chunk).enumerate() {
                c.feed(if i % 3 == 0 { Dir::ToClient } else { Dir::ToServer }, i as u64, ch);
                prop_assert!(c.buffered() <= 2 * MAX_BUFFER);
            }
            c.flush();
        }

        #[test]
        fn fuzz_mutated_session(
            cuts in proptest::collection::vec(0usize..2000, 0..12),
            flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..4),
            gaps in proptest::collection::vec((0usize..16, prop_oneof![0u64..400, any::<u64>()]), 0..3),
        ) {
            fuzz_session(Proto::Redis, C2S, S2C, &cuts, &flips, &gaps);
        }
    }
}
