//! MySQL/MariaDB client/server protocol. Both directions are split into
//! packets (3-byte length, sequence id); of each packet only the first
//! bytes are looked at (enough for [`MAX_TEXT`] of query text) and the rest
//! is skipped, and a packet of 16 MiB-1 is continued by the next ones.
//!
//! The connection phase (server greeting, handshake response, auth switch
//! and more data, the final OK/ERR) emits nothing; it yields the capability
//! flags, of which `CLIENT_DEPRECATE_EOF` decides whether result sets carry
//! EOF packets (when the handshake was not seen, a 5-byte EOF is told from a
//! longer OK). A TLS upgrade stops parsing. In the command phase every
//! packet with sequence id 0 from the client is a command; the server's reply
//! is parsed according to the command it answers: OK, ERR, a result set
//! (column count, column definitions, rows, terminator; further results
//! while the status says more exist), the prepare OK with its parameter and
//! column definitions, ... COM_QUIT, COM_STMT_CLOSE and
//! COM_STMT_SEND_LONG_DATA get no reply.
//!
//! After lost bytes the parser keeps its framing when they fell inside a
//! packet whose length it knew, and otherwise looks for a packet header that
//! looks like a command (sequence 0, known command byte, plausible length)
//! or the start of a reply (sequence 1, OK/ERR/column count).

use std::collections::VecDeque;

use super::{
    pair::{Half, Meta, Pairer},
    text, At, Duplex, Parser, Proto, Step, Summary, MAX_TEXT,
};

/// Payload length of a packet that is continued by the next one.
const MAX_PACKET: u64 = 0xFF_FFFF;
/// Payload bytes looked at per packet.
const PREFIX: usize = MAX_TEXT + 64;
/// Prepared statements remembered per connection (id -> query).
const MAX_STMTS: usize = 64;

const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_DEBUG: u8 = 0x0d;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;

fn command_name(cmd: u8) -> Option<&'static str> {
    Some(match cmd {
        0x00 => "COM_SLEEP",
        COM_QUIT => "COM_QUIT",
        COM_INIT_DB => "COM_INIT_DB",
        COM_QUERY => "COM_QUERY",
        COM_FIELD_LIST => "COM_FIELD_LIST",
        0x05 => "COM_CREATE_DB",
        0x06 => "COM_DROP_DB",
        0x07 => "COM_REFRESH",
        0x08 => "COM_SHUTDOWN",
        COM_STATISTICS => "COM_STATISTICS",
        0x0a => "COM_PROCESS_INFO",
        0x0b => "COM_CONNECT",
        COM_PROCESS_KILL => "COM_PROCESS_KILL",
        COM_DEBUG => "COM_DEBUG",
        COM_PING => "COM_PING",
        0x0f => "COM_TIME",
        0x10 => "COM_DELAYED_INSERT",
        COM_CHANGE_USER => "COM_CHANGE_USER",
        0x12 => "COM_BINLOG_DUMP",
        0x13 => "COM_TABLE_DUMP",
        0x14 => "COM_CONNECT_OUT",
        0x15 => "COM_REGISTER_SLAVE",
        COM_STMT_PREPARE => "COM_STMT_PREPARE",
        COM_STMT_EXECUTE => "COM_STMT_EXECUTE",
        COM_STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
        COM_STMT_CLOSE => "COM_STMT_CLOSE",
        COM_STMT_RESET => "COM_STMT_RESET",
        COM_SET_OPTION => "COM_SET_OPTION",
        COM_STMT_FETCH => "COM_STMT_FETCH",
        0x1d => "COM_DAEMON",
        0x1e => "COM_BINLOG_DUMP_GTID",
        COM_RESET_CONNECTION => "COM_RESET_CONNECTION",
        COM_STMT_BULK_EXECUTE => "COM_STMT_BULK_EXECUTE",
        _ => return None,
    })
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u24(b: &[u8]) -> u64 {
    u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16
}

/// A length-encoded integer at `at`: value and bytes used.
fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let size = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = b.get(at + 1..at + 1 + size)?;
    let v = bytes.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x));
    Some((v, 1 + size))
}

/// Does `first` start with a MySQL server greeting (protocol 10)?
pub fn is_greeting(first: &[u8]) -> bool {
    if first.len() < 6 {
        return false;
    }
    let len = u24(first);
    if first[3] != 0 || first[4] != 10 || !(20..=4096).contains(&len) {
        return false;
    }
    // The server version: printable text up to a NUL.
    let ver = &first[5..];
    match ver.iter().position(|&b| b == 0) {
        Some(n) => n > 0 && ver[..n].iter().all(|b| (0x20..0x7f).contains(b)),
        None => false,
    }
}

/// Does `first` start with a MySQL handshake response (sequence 1,
/// protocol 4.1 capabilities, zero filler)?
pub fn is_handshake_response(first: &[u8]) -> bool {
    if first.len() < 36 || first[3] != 1 || u24(first) < 32 {
        return false;
    }
    let caps = u32le(first, 4).unwrap_or(0);
    caps & CLIENT_PROTOCOL_41 != 0 && first[13..32].iter().all(|&b| b == 0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Like {
    Yes,
    Maybe,
    No,
}

/// Could a command packet start at `d[0]`?
fn command_like(d: &[u8]) -> Like {
    if d.len() >= 4 && d[3] != 0 {
        return Like::No;
    }
    if d.len() < 5 {
        return Like::Maybe;
    }
    let len = u24(d);
    if len == 0 {
        return Like::No;
    }
    let ok = match d[4] {
        COM_QUIT | COM_PING | COM_STATISTICS | COM_DEBUG | COM_RESET_CONNECTION => len == 1,
        COM_QUERY | COM_STMT_PREPARE | COM_INIT_DB => {
            if len < 2 {
                return Like::No;
            }
            let want = ((len - 1) as usize).min(8);
            let Some(t) = d.get(5..5 + want) else {
                return Like::Maybe;
            };
            let first_ok = d[4] == COM_INIT_DB || t[0].is_ascii_alphabetic() || b"(/-# \t\r\n".contains(&t[0]);
            first_ok && t.iter().all(|&b| b >= 0x20 || b"\t\r\n".contains(&b))
        }
        COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => len >= 10,
        COM_STMT_CLOSE | COM_STMT_RESET | COM_PROCESS_KILL => len == 5,
        COM_STMT_SEND_LONG_DATA => len >= 7,
        COM_STMT_FETCH => len == 9,
        COM_SET_OPTION => len == 3,
        COM_FIELD_LIST | COM_CHANGE_USER => len >= 2,
        _ => false,
    };
    if ok {
        Like::Yes
    } else {
        Like::No
    }
}

/// Could the first packet of a reply start at `d[0]`?
fn reply_like(d: &[u8]) -> Like {
    if d.len() >= 4 && d[3] != 1 {
        return Like::No;
    }
    if d.len() < 5 {
        return Like::Maybe;
    }
    let len = u24(d);
    let ok = match d[4] {
        0x00 => (7..0x1_0000).contains(&len),
        0xff => {
            if !(3..0x1_0000).contains(&len) {
                return Like::No;
            }
            if len < 9 {
                true
            } else {
                match d.get(7) {
                    Some(&b) => b == b'#',
                    None => return Like::Maybe,
                }
            }
        }
        0x01..=0xfa | 0xfc if len <= 4 => {
            // A column count: the next packet is a column definition
            // (catalog "def") unless metadata is skipped.
            let end = 4 + len as usize;
            let Some((_, used)) = lenenc(&d[4..end.min(d.len())], 0) else {
                return if end > d.len() { Like::Maybe } else { Like::No };
            };
            if (used as u64) < len {
                return if d.get(4 + used) == Some(&0) {
                    Like::Yes
                } else {
                    Like::No
                };
            }
            if used as u64 != len {
                return Like::No;
            }
            let next = 4 + len as usize;
            let Some(h) = d.get(next..next + 8) else {
                return Like::Maybe;
            };
            h[3] == 2 && h[4] == 3 && &h[5..8] == b"def"
        }
        _ => false,
    };
    if ok {
        Like::Yes
    } else {
        Like::No
    }
}

/// One packet as seen by the handlers: the first bytes of its payload.
struct Pkt<'a> {
    payload: &'a [u8],
    len: u64,
    seq: u8,
    start: u64,
    end: u64,
    ts: u64,
    /// Part of the payload was lost.
    lossy: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Expecting a packet header.
    Hdr,
    /// Skipping the rest of a packet: bytes left.
    Skip(u64),
    /// Looking for a packet header.
    Resync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet.
    Start,
    /// Between the greeting (or handshake response) and the final OK/ERR.
    Auth,
    Command,
}

/// Where the server is within a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// The next packet starts a reply (or the next result of one).
    Idle,
    /// Column definitions left.
    Cols(u64),
    /// The EOF after column definitions (classic protocol).
    ColsEof,
    /// Rows until EOF/OK/ERR.
    Rows,
    /// Prepare: parameter definitions left, then columns.
    Params { left: u16, cols: u16 },
    /// Prepare: the EOF after parameter definitions.
    ParamsEof { cols: u16 },
    /// Prepare: column definitions left.
    PCols(u16),
    /// Prepare: the EOF after column definitions.
    PColsEof,
    /// After LOCAL INFILE or an auth switch: waiting for the final OK/ERR.
    Final,
}

/// The reply being read.
struct Acc {
    start: u64,
    end: u64,
    ts: u64,
    kind: &'static str,
    error_code: Option<u16>,
    error_message: Option<String>,
    rows: Option<u64>,
    affected_rows: Option<u64>,
    partial: bool,
}

/// State shared by both directions.
pub(crate) struct Shared {
    pairer: Pairer,
    server_caps: Option<u32>,
    client_caps: Option<u32>,
    /// The connection switched to TLS: nothing more to parse.
    tls: bool,
    stmts: VecDeque<(u32, Option<String>)>,
}

impl Shared {
    /// Whether result sets end with OK instead of EOF; `None` when unknown.
    fn deprecate_eof(&self) -> Option<bool> {
        match (self.server_caps, self.client_caps) {
            (Some(s), Some(c)) => Some(s & c & CLIENT_DEPRECATE_EOF != 0),
            (None, Some(c)) => Some(c & CLIENT_DEPRECATE_EOF != 0),
            (Some(s), None) if s & CLIENT_DEPRECATE_EOF == 0 => Some(false),
            _ => None,
        }
    }

    fn query_attributes(&self) -> bool {
        match (self.server_caps, self.client_caps) {
            (Some(s), Some(c)) => s & c & CLIENT_QUERY_ATTRIBUTES != 0,
            _ => false,
        }
    }

    fn remember(&mut self, id: u32, query: Option<String>) {
        self.stmts.retain(|(i, _)| *i != id);
        if self.stmts.len() >= MAX_STMTS {
            self.stmts.pop_front();
        }
        self.stmts.push_back((id, query));
    }

    fn query_of(&self, id: u32) -> Option<String> {
        self.stmts.iter().find(|(i, _)| *i == id).and_then(|(_, q)| q.clone())
    }
}

/// One direction of a MySQL connection.
pub(crate) struct Side {
    client: bool,
    frame: Frame,
    /// The next packet continues a 16 MiB-1 one.
    cont: bool,
    phase: Phase,
    /// Client: the queued request the current packet belongs to.
    cur_req: Option<u64>,
    reply: Reply,
    acc: Option<Acc>,
    /// Unknown EOF mode after a prepare: swallow one EOF if it comes.
    maybe_eof: bool,
}

impl Side {
    fn new(client: bool) -> Self {
        Side {
            client,
            frame: Frame::Hdr,
            cont: false,
            phase: Phase::Start,
            cur_req: None,
            reply: Reply::Idle,
            acc: None,
            maybe_eof: false,
        }
    }

    fn on_packet(&mut self, sh: &mut Shared, p: Pkt<'_>) {
        if self.client {
            self.cur_req = None;
            self.client_packet(sh, p);
        } else {
            self.server_packet(sh, p);
        }
    }

    fn on_continuation(&mut self, sh: &mut Shared, end: u64, len: u64) {
        if self.client {
            if let Some(id) = self.cur_req {
                sh.pairer.update(id, |h| h.bytes = h.bytes.saturating_add(4 + len));
            }
        } else if let Some(a) = &mut self.acc {
            a.end = end;
        }
    }

    fn client_packet(&mut self, sh: &mut Shared, p: Pkt<'_>) {
        match self.phase {
            Phase::Start => {
                if p.seq > 1 {
                    // From the middle: auth or LOCAL INFILE data.
                    return;
                }
                if p.seq == 1 && p.payload.len() >= 4 {
                    // Handshake response (or SSL request).
                    let mut caps = u32le(p.payload, 0).unwrap_or(0);
                    if caps & CLIENT_PROTOCOL_41 == 0 {
                        caps &= 0xffff;
                    }
                    if caps & CLIENT_SSL != 0 && p.len == 32 {
                        sh.tls = true;
                        return;
                    }
                    sh.client_caps = Some(caps);
                    self.phase = Phase::Auth;
                    return;
                }
                self.phase = Phase::Command;
            }
            Phase::Auth => {
                if p.seq != 0 {
                    return;
                }
                self.phase = Phase::Command;
            }
            Phase::Command => {}
        }
        if p.seq != 0 {
            // Auth data after COM_CHANGE_USER, LOCAL INFILE contents.
            return;
        }
        self.command(sh, p);
    }

    fn command(&mut self, sh: &mut Shared, p: Pkt<'_>) {
        let Some((&cmd, body)) = p.payload.split_first() else {
            return;
        };
        let command = match command_name(cmd) {
            Some(n) => n.to_string(),
            None => format!("COM_UNKNOWN_0x{cmd:02X}"),
        };
        let (mut query, mut stmt_id, mut schema) = (None, None, None);
        match cmd {
            COM_QUERY => query = query_text(sh, body).map(text),
            COM_STMT_PREPARE => query = Some(text(body)),
            COM_INIT_DB => schema = Some(text(body)),
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE | COM_STMT_FETCH => {
                stmt_id = u32le(body, 0);
                query = stmt_id.and_then(|id| sh.query_of(id));
            }
            COM_STMT_CLOSE | COM_STMT_RESET | COM_STMT_SEND_LONG_DATA => stmt_id = u32le(body, 0),
            _ => {}
        }
        let summary = Summary::MysqlCommand {
            command,
            query,
            stmt_id,
            schema,
        };
        let half = Half {
            summary: Some(summary),
            ts: Some(p.ts),
            bytes: 4 + p.len,
            partial: p.lossy,
        };
        match cmd {
            COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => {
                if cmd == COM_STMT_CLOSE {
                    if let Some(id) = stmt_id {
                        sh.stmts.retain(|(i, _)| *i != id);
                    }
                }
                sh.pairer.alone(half);
            }
            _ => {
                let id = sh.pairer.request(
                    half,
                    Meta {
                        cmd: Some(cmd),
                        ..Meta::default()
                    },
                );
                self.cur_req = Some(id);
            }
        }
    }

    fn server_packet(&mut self, sh: &mut Shared, p: Pkt<'_>) {
        let first = p.payload.first().copied();
        match self.phase {
            Phase::Start => {
                if p.seq == 0 && first == Some(10) {
                    let payload = p.payload;
                    if let Some(v) = payload[1..].iter().position(|&b| b == 0) {
                        // version NUL, conn id 4, auth data 8, filler 1,
                        // caps low 2, charset 1, status 2, caps high 2
                        let at = 1 + v + 1 + 4 + 8 + 1;
                        if let Some(lo) = u16le(payload, at) {
                            let hi = u16le(payload, at + 5).unwrap_or(0);
                            sh.server_caps = Some(u32::from(lo) | u32::from(hi) << 16);
                        }
                    }
                    self.phase = Phase::Auth;
                    return;
                }
                if p.seq != 1 && sh.pairer.pending() == 0 {
                    // A refusal instead of a greeting, the end of an
                    // authentication or the middle of a reply: wait for
                    // the first packet of a reply.
                    return;
                }
                self.phase = Phase::Command;
            }
            Phase::Auth => {
                if matches!(first, Some(0x00 | 0xff)) {
                    self.phase = Phase::Command;
                }
                return;
            }
            Phase::Command => {}
        }
        self.reply_packet(sh, p);
    }

    fn acc(&mut self) -> &mut Acc {
        self.acc.get_or_insert(Acc {
            start: 0,
            end: 0,
            ts: 0,
            kind: "unknown",
            error_code: None,
            error_message: None,
            rows: None,
            affected_rows: None,
            partial: true,
        })
    }

    fn reply_packet(&mut self, sh: &mut Shared, p: Pkt<'_>) {
        let first = p.payload.first().copied();
        if self.maybe_eof {
            self.maybe_eof = false;
            if first == Some(0xfe) && p.len == 5 && p.seq != 1 {
                return;
            }
        }
        if let Some(a) = &mut self.acc {
            a.end = p.end;
            a.partial |= p.lossy;
        }
        let dep = sh.deprecate_eof();
        match self.reply {
            Reply::Idle => self.start(sh, p),
            Reply::Cols(left) => {
                if left <= 1 {
                    self.after_cols(dep);
                } else {
                    self.reply = Reply::Cols(left - 1);
                }
            }
            Reply::ColsEof => {
                self.reply = Reply::Rows;
                let eof = first == Some(0xfe)
                    && match dep {
                        Some(false) => p.len < 9,
                        _ => p.len == 5,
                    };
                if !eof {
                    if dep == Some(false) {
                        self.acc().partial = true;
                    }
                    self.row(sh, p, dep);
                }
            }
            Reply::Rows => self.row(sh, p, dep),
            Reply::Params { left, cols } => {
                if left <= 1 {
                    match dep {
                        Some(true) => self.prepare_cols(sh, cols),
                        None if cols == 0 => {
                            self.finish(sh);
                            self.maybe_eof = true;
                        }
                        _ => self.reply = Reply::ParamsEof { cols },
                    }
                } else {
                    self.reply = Reply::Params { left: left - 1, cols };
                }
            }
            Reply::ParamsEof { cols } => {
                if is_eof(&p) {
                    self.prepare_cols(sh, cols);
                } else {
                    if dep == Some(false) {
                        self.acc().partial = true;
                    }
                    self.prepare_cols(sh, cols);
                    self.reply_packet(sh, p);
                }
            }
            Reply::PCols(left) => {
                if left <= 1 {
                    match dep {
                        Some(true) => self.finish(sh),
                        Some(false) => self.reply = Reply::PColsEof,
                        None => {
                            self.finish(sh);
                            self.maybe_eof = true;
                        }
                    }
                } else {
                    self.reply = Reply::PCols(left - 1);
                }
            }
            Reply::PColsEof => {
                let eof = is_eof(&p);
                if !eof {
                    self.acc().partial = true;
                }
                self.finish(sh);
                if !eof {
                    self.reply_packet(sh, p);
                }
            }
            Reply::Final => {
                if matches!(first, Some(0x00 | 0xff)) {
                    self.reply = Reply::Idle;
                    self.start(sh, p);
                }
            }
        }
    }

    /// The first packet of a reply, or of a further result of one.
    fn start(&mut self, sh: &mut Shared, p: Pkt<'_>) {
        let more = self.acc.is_some();
        if !more {
            self.acc = Some(Acc {
                start: p.start,
                end: p.end,
                ts: p.ts,
                kind: "unknown",
                error_code: None,
                error_message: None,
                rows: None,
                affected_rows: None,
                partial: p.lossy,
            });
        }
        let cmd = if more {
            None
        } else {
            sh.pairer.head().and_then(|m| m.cmd)
        };
        let pl = p.payload;
        let dep = sh.deprecate_eof();
        let Some(&first) = pl.first() else {
            self.acc().partial = true;
            self.finish(sh);
            return;
        };
        if first == 0xff {
            let code = u16le(pl, 1);
            if code == Some(0xffff) {
                // MariaDB progress report, not a reply.
                if !more {
                    self.acc = None;
                }
                return;
            }
            let msg = if pl.get(3) == Some(&b'#') {
                pl.get(9..)
            } else {
                pl.get(3..)
            };
            let a = self.acc();
            a.kind = "err";
            a.error_code = code;
            a.error_message = msg.map(text);
            self.finish(sh);
            return;
        }
        match cmd {
            Some(COM_STMT_PREPARE) if first == 0x00 && pl.len() >= 9 => {
                let id = u32le(pl, 1).unwrap_or(0);
                let cols = u16le(pl, 5).unwrap_or(0);
                let params = u16le(pl, 7).unwrap_or(0);
                self.acc().kind = "prepare_ok";
                let mut query = None;
                if let Some(Summary::MysqlCommand { stmt_id, query: q, .. }) = sh.pairer.head_summary_mut() {
                    *stmt_id = Some(id);
                    query = q.clone();
                }
                sh.remember(id, query);
                if params > 0 {
                    self.reply = Reply::Params { left: params, cols };
                } else {
                    self.prepare_cols(sh, cols);
                }
                return;
            }
            Some(COM_STATISTICS) => {
                self.acc().kind = "string";
                self.finish(sh);
                return;
            }
            Some(COM_FIELD_LIST) => {
                let a = self.acc();
                a.kind = "field_list";
                a.rows = Some(0);
                self.reply = Reply::Rows;
                self.row(sh, p, dep);
                return;
            }
            Some(COM_CHANGE_USER) if first == 0xfe || first == 0x01 => {
                // Auth switch / more data: the OK or ERR follows.
                self.reply = Reply::Final;
                return;
            }
            Some(COM_STMT_FETCH) => {
                let a = self.acc();
                a.kind = "result_set";
                a.rows.get_or_insert(0);
                self.reply = Reply::Rows;
                self.row(sh, p, dep);
                return;
            }
            _ => {}
        }
        match first {
            0x00 => {
                let (affected, status) = ok_packet(pl);
                let a = self.acc();
                if a.kind != "result_set" {
                    a.kind = "ok";
                }
                if let Some(n) = affected {
                    a.affected_rows = Some(a.affected_rows.unwrap_or(0).saturating_add(n));
                }
                if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                    self.finish(sh);
                }
            }
            0xfe if p.len < MAX_PACKET => {
                let status = if p.len >= 7 {
                    ok_packet(pl).1
                } else {
                    u16le(pl, 3).unwrap_or(0)
                };
                let a = self.acc();
                if a.kind == "unknown" {
                    a.kind = "eof";
                }
                if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                    self.finish(sh);
                }
            }
            0xfb => {
                // LOCAL INFILE: the client sends the file, then OK/ERR.
                self.reply = Reply::Final;
            }
            _ => match lenenc(pl, 0) {
                Some((n, used)) if n > 0 => {
                    let a = self.acc();
                    a.kind = "result_set";
                    a.rows.get_or_insert(0);
                    // With optional metadata, a 0 after the count means
                    // no column definitions follow.
                    if pl.get(used) == Some(&0) {
                        self.after_cols(dep);
                    } else {
                        self.reply = Reply::Cols(n);
                    }
                }
                _ => {
                    self.acc().partial = true;
                    self.finish(sh);
                }
            },
        }
    }

    fn after_cols(&mut self, dep: Option<bool>) {
        self.reply = if dep == Some(true) { Reply::Rows } else { Reply::ColsEof };
    }

    fn prepare_cols(&mut self, sh: &mut Shared, cols: u16) {
        if cols > 0 {
            self.reply = Reply::PCols(cols);
        } else {
            self.finish(sh);
        }
    }

    fn row(&mut self, sh: &mut Shared, p: Pkt<'_>, dep: Option<bool>) {
        let pl = p.payload;
        let limit = if dep == Some(false) { 9 } else { MAX_PACKET };
        match pl.first() {
            Some(0xfe) if p.len < limit => {
                let ok_format = dep == Some(true) || (dep.is_none() && p.len >= 7);
                let status = if ok_format {
                    ok_packet(pl).1
                } else {
                    u16le(pl, 3).unwrap_or(0)
                };
                if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                    self.reply = Reply::Idle;
                } else {
                    self.finish(sh);
                }
            }
            Some(0xff) => {
                let code = u16le(pl, 1);
                let msg = if pl.get(3) == Some(&b'#') {
                    pl.get(9..)
                } else {
                    pl.get(3..)
                };
                let a = self.acc();
                a.kind = "err";
                a.error_code = code;
                a.error_message = msg.map(text);
                self.finish(sh);
            }
            _ => {
                let a = self.acc();
                a.rows = Some(a.rows.unwrap_or(0) + 1);
            }
        }
    }

    /// The reply is complete: pair it.
    fn finish(&mut self, sh: &mut Shared) {
        self.reply = Reply::Idle;
        let Some(a) = self.acc.take() else { return };
        let Shared { pairer, stmts, .. } = sh;
        if let Some(Summary::MysqlCommand {
            query: query @ None,
            stmt_id: Some(id),
            ..
        }) = pairer.head_summary_mut()
        {
            *query = stmts.iter().find(|(i, _)| i == id).and_then(|(_, q)| q.clone());
        }
        let summary = Summary::MysqlReply {
            kind: a.kind.to_string(),
            error_code: a.error_code,
            error_message: a.error_message,
            rows: a.rows,
            affected_rows: a.affected_rows,
        };
        let bytes = a.end.wrapping_sub(a.start);
        sh.pairer.response(Half {
            summary: Some(summary),
            ts: Some(a.ts),
            bytes,
            partial: a.partial,
        });
    }

    fn mark_partial(&mut self, sh: &mut Shared) {
        if self.client {
            if let Some(id) = self.cur_req {
                sh.pairer.update(id, |h| h.partial = true);
            }
        } else if let Some(a) = &mut self.acc {
            a.partial = true;
        }
    }

    /// Framing lost: settle what was in flight and look for a header.
    fn lose_framing(&mut self, sh: &mut Shared) {
        if self.client {
            self.mark_partial(sh);
            if self.phase == Phase::Command {
                sh.pairer.doubt_next();
                sh.pairer.request(
                    Half {
                        partial: true,
                        ..Half::default()
                    },
                    Meta::default(),
                );
            }
        } else if self.acc.is_some() {
            self.mark_partial(sh);
            self.finish(sh);
            sh.pairer.doubt_all();
        } else if self.phase == Phase::Command {
            sh.pairer.lose_head();
            sh.pairer.doubt_all();
        }
        self.frame = Frame::Resync;
        self.cont = false;
        self.cur_req = None;
        self.reply = Reply::Idle;
        self.maybe_eof = false;
    }

    fn resync(&mut self, data: &[u8]) -> Step {
        for p in 0..data.len() {
            let like = if self.client {
                command_like(&data[p..])
            } else {
                reply_like(&data[p..])
            };
            match like {
                Like::Yes => {
                    self.frame = Frame::Hdr;
                    self.phase = Phase::Command;
                    return Step::Eat(p);
                }
                Like::Maybe => return if p == 0 { Step::Need } else { Step::Eat(p) },
                Like::No => {}
            }
        }
        Step::Eat(data.len())
    }
}

/// An EOF packet of the classic protocol.
fn is_eof(p: &Pkt<'_>) -> bool {
    p.payload.first() == Some(&0xfe) && p.len < 9
}

/// Affected rows and status flags of an OK packet.
fn ok_packet(pl: &[u8]) -> (Option<u64>, u16) {
    let Some((affected, a)) = lenenc(pl, 1) else {
        return (None, 0);
    };
    let Some((_, b)) = lenenc(pl, 1 + a) else {
        return (Some(affected), 0);
    };
    (Some(affected), u16le(pl, 1 + a + b).unwrap_or(0))
}

/// The SQL of a COM_QUERY body (after query attributes, if negotiated).
fn query_text<'a>(sh: &Shared, body: &'a [u8]) -> Option<&'a [u8]> {
    if !sh.query_attributes() {
        return Some(body);
    }
    let (params, a) = lenenc(body, 0)?;
    let (_, b) = lenenc(body, a)?;
    (params == 0).then(|| &body[a + b..])
}

impl Parser for Side {
    type Shared = Shared;

    fn step(&mut self, sh: &mut Shared, data: &[u8], at: At) -> Step {
        if sh.tls {
            return Step::Eat(data.len());
        }
        match self.frame {
            Frame::Resync => self.resync(data),
            Frame::Skip(left) => {
                let k = left.min(data.len() as u64);
                self.frame = if k == left { Frame::Hdr } else { Frame::Skip(left - k) };
                Step::Eat(k as usize)
            }
            Frame::Hdr => {
                if data.len() < 4 {
                    return Step::Need;
                }
                let len = u24(data);
                let seq = data[3];
                if self.cont {
                    self.cont = len == MAX_PACKET;
                    self.on_continuation(sh, at.abs.wrapping_add(4 + len), len);
                    self.frame = if len > 0 { Frame::Skip(len) } else { Frame::Hdr };
                    return Step::Eat(4);
                }
                let need = (len as usize).min(PREFIX);
                if data.len() < 4 + need {
                    return Step::Need;
                }
                self.cont = len == MAX_PACKET;
                let rest = len - need as u64;
                self.frame = if rest > 0 { Frame::Skip(rest) } else { Frame::Hdr };
                let p = Pkt {
                    payload: &data[4..4 + need],
                    len,
                    seq,
                    start: at.abs,
                    end: at.abs.wrapping_add(4 + len),
                    ts: at.ts,
                    lossy: false,
                };
                self.on_packet(sh, p);
                Step::Eat(4 + need)
            }
        }
    }

    fn gap(&mut self, sh: &mut Shared, buffered: &[u8], at: At, lost: u64) {
        if sh.tls {
            return;
        }
        match self.frame {
            Frame::Resync => return,
            Frame::Skip(left) if buffered.is_empty() && lost <= left => {
                self.frame = if lost == left {
                    Frame::Hdr
                } else {
                    Frame::Skip(left - lost)
                };
                self.mark_partial(sh);
                return;
            }
            Frame::Hdr if buffered.len() >= 4 && !self.cont => {
                // The header is known: so is where the packet ends.
                let len = u24(buffered);
                let have = (buffered.len() - 4) as u64;
                let p = Pkt {
                    payload: &buffered[4..],
                    len,
                    seq: buffered[3],
                    start: at.abs,
                    end: at.abs.wrapping_add(4 + len),
                    ts: at.ts,
                    lossy: true,
                };
                if have.saturating_add(lost) <= len {
                    self.cont = len == MAX_PACKET;
                    let rest = len - have - lost;
                    self.frame = if rest > 0 { Frame::Skip(rest) } else { Frame::Hdr };
                    self.on_packet(sh, p);
                    self.mark_partial(sh);
                    return;
                }
                self.on_packet(sh, p);
            }
            _ => {}
        }
        self.lose_framing(sh);
    }

    fn flush(&mut self, sh: &mut Shared, buffered: &[u8], _at: At) {
        if !self.client && self.acc.is_some() {
            self.mark_partial(sh);
            self.finish(sh);
        }
        let boundary = self.frame == Frame::Hdr && buffered.is_empty() && !self.cont;
        self.frame = if boundary || sh.tls { Frame::Hdr } else { Frame::Resync };
        self.cont = false;
        self.cur_req = None;
        self.reply = Reply::Idle;
        self.maybe_eof = false;
    }

    fn pairer(sh: &mut Shared) -> &mut Pairer {
        &mut sh.pairer
    }

    fn pending(sh: &Shared) -> usize {
        sh.pairer.pending()
    }
}

/// A parser pair for one MySQL connection.
pub(crate) fn duplex() -> Duplex<Side> {
    let sh = Shared {
        pairer: Pairer::new(Proto::Mysql),
        server_caps: None,
        client_caps: None,
        tls: false,
        stmts: VecDeque::new(),
    };
    Duplex::new(Side::new(true), Side::new(false), sh)
}

#[cfg(test)]
mod tests {
    use super::super::{testutil::*, Conn, Dir, Exchange, MAX_BUFFER};
    use super::*;
    use proptest::prelude::*;

    const SESSION_C2S: &[u8] = include_bytes!("testdata/mysql_session.c2s");
    const SESSION_S2C: &[u8] = include_bytes!("testdata/mysql_session.s2c");
    const EOF_C2S: &[u8] = include_bytes!("testdata/mysql_session_eof.c2s");
    const EOF_S2C: &[u8] = include_bytes!("testdata/mysql_session_eof.s2c");
    const CLI_C2S: &[u8] = include_bytes!("testdata/mysql_cli.c2s");
    const CLI_S2C: &[u8] = include_bytes!("testdata/mysql_cli.s2c");

    /// Command, query or schema, statement id.
    fn cmd(e: &Exchange) -> (String, Option<String>, Option<u32>) {
        match &e.request {
            Some(Summary::MysqlCommand {
                command,
                query,
                stmt_id,
                schema,
            }) => (command.clone(), query.clone().or(schema.clone()), *stmt_id),
            other => panic!("not a command: {other:?}"),
        }
    }

    /// Kind, error code, rows, affected rows.
    type Got = (String, Option<u16>, Option<u64>, Option<u64>);

    fn reply(e: &Exchange) -> Option<Got> {
        match &e.response {
            Some(Summary::MysqlReply {
                kind,
                error_code,
                rows,
                affected_rows,
                ..
            }) => Some((kind.clone(), *error_code, *rows, *affected_rows)),
            None => None,
            other => panic!("not a reply: {other:?}"),
        }
    }

    type Row = (
        &'static str,
        Option<&'static str>,
        Option<u32>,
        Option<(&'static str, Option<u16>, Option<u64>, Option<u64>)>,
    );

    fn check(out: &[Exchange], want: &[Row]) {
        let got: Vec<_> = out.iter().map(|e| (cmd(e), reply(e), e.partial)).collect();
        let want: Vec<_> = want
            .iter()
            .map(|(c, q, id, r)| {
                let r = r.map(|(k, code, rows, aff)| (k.to_string(), code, rows, aff));
                ((c.to_string(), q.map(str::to_string), *id), r, false)
            })
            .collect();
        assert_eq!(got, want);
    }

    const SELECT_ITEMS: &str = "SELECT id, name, price FROM items ORDER BY id";
    const PREPARED: &str = "SELECT name, price FROM items WHERE id > ? AND price < ?";

    fn session_rows(stmt: u32) -> Vec<Row> {
        vec![
            // No reply expected: returned as soon as seen.
            ("COM_STMT_CLOSE", None, Some(stmt), None),
            ("COM_QUIT", None, None, None),
            ("COM_INIT_DB", Some("shop"), None, Some(("ok", None, None, Some(0)))),
            (
                "COM_QUERY",
                Some(SELECT_ITEMS),
                None,
                Some(("result_set", None, Some(3), None)),
            ),
            (
                "COM_QUERY",
                Some("SELECT * FROM missing_table"),
                None,
                Some(("err", Some(1146), None, None)),
            ),
            (
                "COM_QUERY",
                Some("INSERT INTO items VALUES (4, 'fig', 2.10), (5, 'kiwi', 0.90)"),
                None,
                Some(("ok", None, None, Some(2))),
            ),
            (
                "COM_STMT_PREPARE",
                Some(PREPARED),
                Some(stmt),
                Some(("prepare_ok", None, None, None)),
            ),
            (
                "COM_STMT_EXECUTE",
                Some(PREPARED),
                Some(stmt),
                Some(("result_set", None, Some(3), None)),
            ),
            (
                "COM_QUERY",
                Some("UPDATE items SET price = price + 1 WHERE id = 999"),
                None,
                Some(("ok", None, None, Some(0))),
            ),
            (
                "COM_QUERY",
                Some("SELECT COUNT(*) AS n FROM items WHERE 1 = 0 GROUP BY id"),
                None,
                Some(("result_set", None, Some(0), None)),
            ),
            ("COM_PING", None, None, Some(("ok", None, None, Some(0)))),
            (
                "COM_QUERY",
                Some("DELETE FROM items WHERE id >= 4"),
                None,
                Some(("ok", None, None, Some(2))),
            ),
        ]
    }

    #[test]
    fn recorded_session_deprecate_eof() {
        let out = assert_split_invariant(Proto::Mysql, SESSION_C2S, SESSION_S2C);
        check(&out, &session_rows(3));
        match &out[4].response {
            Some(Summary::MysqlReply { error_message, .. }) => {
                assert_eq!(
                    error_message.as_deref(),
                    Some("Table 'shop.missing_table' doesn't exist")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recorded_session_classic_eof() {
        let out = assert_split_invariant(Proto::Mysql, EOF_C2S, EOF_S2C);
        check(&out, &session_rows(4));
    }

    #[test]
    fn recorded_cli_session() {
        let out = assert_split_invariant(Proto::Mysql, CLI_C2S, CLI_S2C);
        check(
            &out,
            &[
                ("COM_QUIT", None, None, None),
                (
                    "COM_QUERY",
                    Some("SELECT id, name FROM items WHERE price > 0.6"),
                    None,
                    Some(("result_set", None, Some(2), None)),
                ),
                (
                    "COM_QUERY",
                    Some("SELECT * FROM nope"),
                    None,
                    Some(("err", Some(1146), None, None)),
                ),
                (
                    "COM_QUERY",
                    Some("SELECT DATABASE()"),
                    None,
                    Some(("result_set", None, Some(1), None)),
                ),
                ("COM_INIT_DB", Some("mysql"), None, Some(("ok", None, None, Some(0)))),
                (
                    "COM_QUERY",
                    Some("SELECT 1+1 AS two"),
                    None,
                    Some(("result_set", None, Some(1), None)),
                ),
            ],
        );
    }

    /// Packets of a stream: (seq, bytes).
    fn packets(s: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 4 <= s.len() {
            let len = u24(&s[i..]) as usize;
            out.push((s[i + 3], &s[i..i + 4 + len]));
            i += 4 + len;
        }
        assert_eq!(i, s.len());
        out
    }

    /// The two streams as the wire had them: handshake packets by sequence
    /// id, then each command followed by its reply packets.
    fn turns<'a>(c2s: &'a [u8], s2c: &'a [u8]) -> Vec<(Dir, &'a [u8])> {
        let (cp, sp) = (packets(c2s), packets(s2c));
        let (mut i, mut j, mut seq) = (0, 0, 0u8);
        let mut out = Vec::new();
        loop {
            if j < sp.len() && sp[j].0 == seq {
                out.push((Dir::ToClient, sp[j].1));
                j += 1;
            } else if i < cp.len() && cp[i].0 == seq && seq > 0 {
                out.push((Dir::ToServer, cp[i].1));
                i += 1;
            } else {
                break;
            }
            seq += 1;
        }
        while i < cp.len() {
            let (_, c) = cp[i];
            i += 1;
            out.push((Dir::ToServer, c));
            if matches!(c[4], COM_QUIT | COM_STMT_CLOSE) {
                continue;
            }
            let mut first = true;
            while j < sp.len() && (first || sp[j].0 != 1) {
                out.push((Dir::ToClient, sp[j].1));
                j += 1;
                first = false;
            }
        }
        assert_eq!(j, sp.len());
        out
    }

    fn sorted(v: Vec<Exchange>) -> Vec<String> {
        let mut v: Vec<String> = strip(v).into_iter().map(|e| format!("{e:?}")).collect();
        v.sort();
        v
    }

    #[test]
    fn recorded_sessions_in_wire_order() {
        for (c2s, s2c) in [(SESSION_C2S, SESSION_S2C), (EOF_C2S, EOF_S2C), (CLI_C2S, CLI_S2C)] {
            let out = run_steps(Proto::Mysql, &turns(c2s, s2c));
            for e in &out {
                if e.response.is_some() {
                    assert!(e.latency_ns().is_some_and(|l| l >= 1000), "{e:?}");
                }
            }
            assert_eq!(sorted(out), sorted(run_chunked(Proto::Mysql, c2s, s2c, usize::MAX)));
        }
    }

    /// The streams without their connection phase, as seen by a capture
    /// started later.
    fn without_handshake<'a>(c2s: &'a [u8], s2c: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let skip = |s: &'a [u8], seq: u8| {
            let mut i = 0;
            for (sq, p) in packets(s) {
                if sq == seq {
                    break;
                }
                i += p.len();
            }
            &s[i..]
        };
        (skip(c2s, 0), skip(s2c, 1))
    }

    #[test]
    fn from_the_middle_without_capabilities() {
        for (c2s, s2c, stmt) in [(SESSION_C2S, SESSION_S2C, 3), (EOF_C2S, EOF_S2C, 4)] {
            let (c, s) = without_handshake(c2s, s2c);
            let out = assert_split_invariant(Proto::Mysql, c, s);
            check(&out, &session_rows(stmt));
        }
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        v.push(seq);
        v.extend(payload);
        v
    }

    fn ok(seq: u8, affected: u8) -> Vec<u8> {
        packet(seq, &[0, affected, 0, 2, 0, 0, 0])
    }

    #[test]
    fn huge_query_spans_packets() {
        // A 16 MiB + 100 byte COM_QUERY: one full packet and a continuation.
        let total = 0xff_ffff + 100;
        let mut payload = vec![COM_QUERY];
        payload.extend(b"INSERT INTO t VALUES ('");
        payload.resize(total, b'x');
        let mut c2s = Vec::new();
        c2s.extend(&packet(0, &payload[..0xff_ffff])[..]);
        c2s.extend(packet(1, &payload[0xff_ffff..]));
        c2s.extend(packet(0, &[COM_PING]));
        let s2c = [ok(2, 1), ok(1, 0)].concat();
        let mut c = Conn::new(Proto::Mysql);
        let mut out = Vec::new();
        for ch in c2s.chunks(1448) {
            out.extend(c.feed(Dir::ToServer, 1, ch));
            assert!(c.buffered() <= PREFIX + 4);
        }
        out.extend(c.feed(Dir::ToClient, 2, &s2c));
        assert_eq!(out.len(), 2);
        let (name, query, _) = cmd(&out[0]);
        assert_eq!(name, "COM_QUERY");
        let query = query.unwrap();
        assert_eq!(query.len(), MAX_TEXT);
        assert!(query.starts_with("INSERT INTO t VALUES ('xxx"));
        assert_eq!(out[0].req_bytes, total as u64 + 8);
        assert_eq!(reply(&out[0]), Some(("ok".into(), None, None, Some(1))));
        assert_eq!(cmd(&out[1]).0, "COM_PING");
        assert!(out.iter().all(|e| !e.partial));
    }

    fn result_set(rows: usize, dep: bool) -> Vec<u8> {
        let mut s = packet(1, &[2]);
        let mut seq = 2;
        for name in [&b"a"[..], b"b"] {
            let mut def = b"\x03def\x00\x00\x00".to_vec();
            def.push(name.len() as u8);
            def.extend(name);
            def.extend(b"\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00");
            s.extend(packet(seq, &def));
            seq = seq.wrapping_add(1);
        }
        if !dep {
            s.extend(packet(seq, &[0xfe, 0, 0, 2, 0]));
            seq = seq.wrapping_add(1);
        }
        for i in 0..rows {
            let v = format!("{i}");
            let mut row = vec![v.len() as u8];
            row.extend(v.bytes());
            row.extend(b"\x03abc");
            s.extend(packet(seq, &row));
            seq = seq.wrapping_add(1);
        }
        if dep {
            s.extend(packet(seq, &[0xfe, 0, 0, 2, 0, 0, 0]));
        } else {
            s.extend(packet(seq, &[0xfe, 0, 0, 2, 0]));
        }
        s
    }

    #[test]
    fn many_rows_many_packets_per_feed() {
        for dep in [false, true] {
            let c2s: Vec<u8> = (0..5).flat_map(|_| packet(0, b"\x03SELECT a, b FROM t")).collect();
            let s2c: Vec<u8> = (0..5).flat_map(|i| result_set(i * 300, dep)).collect();
            for chunk in [1, 7, 1448, usize::MAX] {
                let out = run_chunked(Proto::Mysql, &c2s, &s2c, chunk);
                let rows: Vec<_> = out.iter().map(|e| reply(e).unwrap().2).collect();
                assert_eq!(
                    rows,
                    [Some(0), Some(300), Some(600), Some(900), Some(1200)],
                    "dep {dep} chunk {chunk}"
                );
                assert!(out.iter().all(|e| !e.partial));
            }
        }
    }

    #[test]
    fn multi_results_and_statistics() {
        let c2s = [
            packet(0, b"\x03CALL p()"),
            packet(0, &[COM_STATISTICS]),
            packet(0, &[COM_QUIT]),
        ]
        .concat();
        // Result set ending with "more results", then the final OK.
        let mut first = result_set(2, true);
        let n = first.len();
        first[n - 4] = 0x0a; // status: autocommit | more results
        let s2c = [
            first,
            packet(5, &[0, 0, 0, 2, 0, 0, 0]),
            packet(1, b"Uptime: 5  Threads: 1"),
        ]
        .concat();
        let out = assert_split_invariant(Proto::Mysql, &c2s, &s2c);
        let got: Vec<_> = out.iter().map(|e| (cmd(e).0, reply(e))).collect();
        assert_eq!(
            got,
            [
                ("COM_QUIT".to_string(), None),
                (
                    "COM_QUERY".to_string(),
                    Some(("result_set".to_string(), None, Some(2), Some(0)))
                ),
                (
                    "COM_STATISTICS".to_string(),
                    Some(("string".to_string(), None, None, None))
                ),
            ]
        );
    }

    #[test]
    fn gap_inside_packet_keeps_framing() {
        let mut c = Conn::new(Proto::Mysql);
        // A 5000-byte query whose middle was not captured.
        let mut q = b"\x03SELECT '".to_vec();
        q.resize(5000, b'y');
        let qp = packet(0, &q);
        let mut out = c.feed(Dir::ToServer, 1, &qp[..1400]);
        c.gap(Dir::ToServer, 3000);
        out.extend(c.feed(Dir::ToServer, 2, &[&qp[4400..], &packet(0, &[COM_PING])[..]].concat()));
        // A reply whose rows were partly lost.
        let rs = result_set(50, false);
        out.extend(c.feed(Dir::ToClient, 3, &rs[..305]));
        c.gap(Dir::ToClient, 5);
        out.extend(c.feed(Dir::ToClient, 4, &[&rs[310..], &ok(1, 0)[..]].concat()));
        let got: Vec<_> = out
            .iter()
            .map(|e| (cmd(e).0, reply(e).map(|r| r.0), e.partial))
            .collect();
        assert_eq!(
            got,
            [
                ("COM_QUERY".to_string(), Some("result_set".to_string()), true),
                ("COM_PING".to_string(), Some("ok".to_string()), false),
            ]
        );
        assert!(cmd(&out[0]).1.unwrap().starts_with("SELECT 'yyy"));
        assert_eq!(out[0].req_bytes, 5004);
        assert_eq!(out[0].resp_bytes, rs.len() as u64);
    }

    #[test]
    fn gap_across_packets_resyncs() {
        let mut c = Conn::new(Proto::Mysql);
        let q1 = packet(0, b"\x03SELECT 1");
        let q2 = packet(0, b"\x03SELECT 2");
        let q3 = packet(0, b"\x03SELECT 3");
        let mut out = c.feed(Dir::ToServer, 1, &q1);
        // The client lost the end of q2 and more: framing is gone.
        out.extend(c.feed(Dir::ToServer, 2, &q2[..6]));
        c.gap(Dir::ToServer, 40);
        out.extend(c.feed(Dir::ToServer, 3, &[&b"garbage"[..], &q3].concat()));
        // The server lost the middle of the first reply.
        let rs = result_set(3, true);
        out.extend(c.feed(Dir::ToClient, 4, &rs[..20]));
        c.gap(Dir::ToClient, 60);
        out.extend(c.feed(Dir::ToClient, 5, &rs[80..]));
        for ts in 6..9 {
            out.extend(c.feed(Dir::ToClient, ts, &ok(1, 0)));
        }
        // Drained: clean again.
        out.extend(c.feed(Dir::ToServer, 10, &packet(0, &[COM_PING])));
        out.extend(c.feed(Dir::ToClient, 11, &ok(1, 0)));
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.request.as_ref().map(|_| cmd(e).1), reply(e).map(|r| r.0), e.partial))
            .collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            got,
            [
                (Some(s("SELECT 1")), s("result_set"), true),
                // What was captured of the second query.
                (Some(s("S")), s("ok"), true),
                // The lost bytes after it may have held a command.
                (None, s("ok"), true),
                (Some(s("SELECT 3")), s("ok"), true),
                (Some(None), s("ok"), false),
            ]
        );
    }

    #[test]
    fn tls_upgrade_stops_parsing() {
        let greeting = &SESSION_S2C[..4 + u24(SESSION_S2C) as usize];
        let mut ssl = 0x0100_8a0fu32.to_le_bytes().to_vec();
        ssl.resize(32, 0);
        let mut c = Conn::new(Proto::Mysql);
        let mut out = c.feed(Dir::ToClient, 1, greeting);
        out.extend(c.feed(Dir::ToServer, 2, &packet(1, &ssl)));
        out.extend(c.feed(Dir::ToServer, 3, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"));
        out.extend(c.feed(Dir::ToClient, 4, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03"));
        out.extend(c.flush());
        assert!(out.is_empty());
    }

    #[test]
    fn prepare_without_columns_unknown_eof() {
        // Mid-stream, EOF mode unknown: a prepare with one parameter and no
        // columns, then a ping.
        let c2s = [packet(0, b"\x16INSERT INTO t VALUES (?)"), packet(0, &[COM_PING])].concat();
        let mut prep = vec![0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let def = b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00";
        let mut s2c = packet(1, &prep);
        s2c.extend(packet(2, def));
        s2c.extend(packet(3, &[0xfe, 0, 0, 2, 0]));
        s2c.extend(ok(1, 0));
        let out = assert_split_invariant(Proto::Mysql, &c2s, &s2c);
        let got: Vec<_> = out.iter().map(|e| (cmd(e), reply(e).map(|r| r.0), e.partial)).collect();
        assert_eq!(
            got,
            [
                (
                    (
                        "COM_STMT_PREPARE".into(),
                        Some("INSERT INTO t VALUES (?)".into()),
                        Some(7)
                    ),
                    Some("prepare_ok".into()),
                    false
                ),
                (("COM_PING".into(), None, None), Some("ok".into()), false),
            ]
        );
        // Without the EOF (deprecate mode) the same.
        prep[1] = 8;
        let s2c = [packet(1, &prep), packet(2, def), ok(1, 0)].concat();
        let out = assert_split_invariant(Proto::Mysql, &c2s, &s2c);
        assert_eq!(
            out.iter().map(|e| reply(e).map(|r| r.0)).collect::<Vec<_>>(),
            [Some("prepare_ok".into()), Some("ok".into())]
        );
    }

    #[test]
    fn detects_greeting_and_handshake() {
        assert!(is_greeting(SESSION_S2C));
        assert!(is_greeting(CLI_S2C));
        assert!(!is_greeting(&SESSION_S2C[..5]));
        assert!(is_handshake_response(SESSION_C2S));
        assert!(is_handshake_response(CLI_C2S));
        assert!(!is_handshake_response(&CLI_C2S[..20]));
        assert!(!is_greeting(b"HTTP/1.1 200 OK\r\n"));
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
            crate::l7::testutil::fuzz_ops(Proto::Mysql, ops)?;
        }

        #[test]
        fn fuzz_packet_like_bytes(
            pkts in proptest::collection::vec(
                (0usize..40, any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
                0..60,
            ),
            chunk in 1usize..100,
        ) {
            // Well-framed packets with random seq ids, first bytes and bodies.
            let mut c2s = Vec::new();
            let mut s2c = Vec::new();
            for (k, (len, seq, first, body)) in pkts.into_iter().enumerate() {
                let mut payload = vec![first];
                payload.extend(body);
                payload.truncate(len.max(1));
                let p = packet(seq % 4, &payload);
                if k % 2 == 0 { c2s.extend(p) } else { s2c.extend(p) }
            }
            let mut c = Conn::new(Proto::Mysql);
            let n = c2s.len().max(s2c.len());
            let mut i = 0;
            while i < n {
                let end = (i + chunk).min(c2s.len());
                if i < end { c.feed(Dir::ToServer, i as u64, &c2s[i..end]); }
                let end = (i + chunk).min(s2c.len());
                if i < end { c.feed(Dir::ToClient, i as u64, &s2c[i..end]); }
                prop_assert!(c.buffered() <= 2 * MAX_BUFFER);
                i += chunk;
            }
            c.flush();
        }

        #[test]
        fn fuzz_mutated_session(
            cuts in proptest::collection::vec(0usize..2000, 0..12),
            flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..4),
            gaps in proptest::collection::vec((0usize..16, prop_oneof![0u64..400, any::<u64>()]), 0..3),
        ) {
            fuzz_session(Proto::Mysql, SESSION_C2S, SESSION_S2C, &cuts, &flips, &gaps);
            fuzz_session(Proto::Mysql, CLI_C2S, CLI_S2C, &cuts, &flips, &gaps);
        }
    }
}
