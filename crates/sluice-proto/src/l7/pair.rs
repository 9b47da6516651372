//! FIFO pairing of requests with responses, shared by every protocol.
//!
//! Requests wait in a bounded queue; each completed response takes the
//! oldest one. Protocol parsers peek at the oldest request when a response
//! starts (an HTTP response to HEAD has no body, a MySQL reply to a prepare
//! has its own layout) and put the queue in doubt after losing their
//! framing: until it drains, pairs involving requests from the doubtful one
//! on may be off by one and are marked partial.

use std::collections::VecDeque;

use super::{Exchange, Proto, Summary, MAX_PENDING};

/// What the response parser needs to know about a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// HTTP HEAD: the response has no body.
    pub head: bool,
    /// HTTP CONNECT: a 2xx response turns the connection into a tunnel.
    pub connect: bool,
    /// Redis (P|S)(UN)SUBSCRIBE: the reply is a push-style confirmation.
    pub subscribe: bool,
    /// Redis: arguments after the command name.
    pub args: u32,
    /// MySQL command byte (`None` when unknown).
    pub cmd: Option<u8>,
}

/// One half of an exchange as seen by a parser.
#[derive(Clone, Debug, Default)]
pub(crate) struct Half {
    pub summary: Option<Summary>,
    pub ts: Option<u64>,
    pub bytes: u64,
    pub partial: bool,
}

struct Req {
    half: Half,
    meta: Meta,
    id: u64,
}

/// The queue of requests waiting for responses, and the exchanges completed
/// so far (taken by [`Pairer::take`]).
pub(crate) struct Pairer {
    proto: Proto,
    pending: VecDeque<Req>,
    out: Vec<Exchange>,
    next_id: u64,
    /// Requests from this id on may be paired wrong.
    doubt: Option<u64>,
}

impl Pairer {
    pub fn new(proto: Proto) -> Self {
        Pairer {
            proto,
            pending: VecDeque::new(),
            out: Vec::new(),
            next_id: 0,
            doubt: None,
        }
    }

    /// Queues a request; returns its id for [`Pairer::update`].
    pub fn request(&mut self, half: Half, meta: Meta) -> u64 {
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                self.emit(Some(old.half), old.id, None, true);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Req { half, meta, id });
        id
    }

    /// A request that gets no response (MySQL COM_QUIT, COM_STMT_CLOSE).
    pub fn alone(&mut self, half: Half) {
        let id = self.next_id;
        self.next_id += 1;
        self.emit(Some(half), id, None, false);
    }

    /// A complete response: pairs with the oldest request, if any.
    pub fn response(&mut self, half: Half) {
        match self.pending.pop_front() {
            Some(req) => self.emit(Some(req.half), req.id, Some(half), false),
            None => self.emit(None, u64::MAX, Some(half), true),
        }
        if self.pending.is_empty() {
            self.doubt = None;
        }
    }

    /// The response to the oldest request was lost: return it alone.
    pub fn lose_head(&mut self) {
        if let Some(req) = self.pending.pop_front() {
            self.emit(Some(req.half), req.id, None, true);
        }
        if self.pending.is_empty() {
            self.doubt = None;
        }
    }

    /// What the oldest request asked for.
    pub fn head(&self) -> Option<Meta> {
        self.pending.front().map(|r| r.meta)
    }

    /// The oldest request's summary, to complete it from its response.
    pub fn head_summary_mut(&mut self) -> Option<&mut Summary> {
        self.pending.front_mut().and_then(|r| r.half.summary.as_mut())
    }

    /// Changes a request still waiting (a body seen later, a gap in it).
    pub fn update(&mut self, id: u64, f: impl FnOnce(&mut Half)) {
        if let Some(r) = self.pending.iter_mut().rev().find(|r| r.id == id) {
            f(&mut r.half);
        }
    }

    /// The client side lost its framing: requests queued from now on may not
    /// be the ones the server answers next (some may have been lost).
    pub fn doubt_next(&mut self) {
        let id = self.next_id;
        self.doubt = Some(self.doubt.map_or(id, |d| d.min(id)));
    }

    /// The server side lost its framing: every waiting request may get
    /// another one's response.
    pub fn doubt_all(&mut self) {
        if let Some(head) = self.pending.front() {
            let id = head.id;
            self.doubt = Some(self.doubt.map_or(id, |d| d.min(id)));
        }
    }

    /// Returns every waiting request without response.
    pub fn flush(&mut self) {
        while let Some(req) = self.pending.pop_front() {
            self.emit(Some(req.half), req.id, None, true);
        }
        self.doubt = None;
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn take(&mut self) -> Vec<Exchange> {
        std::mem::take(&mut self.out)
    }

    fn emit(&mut self, req: Option<Half>, id: u64, resp: Option<Half>, missing: bool) {
        let req = req.unwrap_or_default();
        let resp = resp.unwrap_or_default();
        if req.summary.is_none() && resp.summary.is_none() {
            // Nothing known about either half (a lost message met a lost
            // message): not worth reporting.
            return;
        }
        let doubt = self.doubt.is_some_and(|d| id >= d);
        let partial = missing || req.partial || resp.partial || doubt;
        self.out.push(Exchange {
            proto: self.proto,
            request: req.summary,
            response: resp.summary,
            req_ts_ns: req.ts,
            resp_ts_ns: resp.ts,
            req_bytes: req.bytes,
            resp_bytes: resp.bytes,
            partial,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(n: u64) -> Half {
        Half {
            summary: Some(Summary::RedisReply {
                kind: format!("{n}"),
                error: None,
            }),
            ts: Some(n),
            bytes: n,
            partial: false,
        }
    }

    #[test]
    fn fifo_and_missing_halves() {
        let mut p = Pairer::new(Proto::Redis);
        p.request(half(1), Meta::default());
        p.request(half(2), Meta::default());
        p.response(half(10));
        p.response(half(20));
        p.response(half(30));
        let out = p.take();
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].req_bytes, out[0].resp_bytes, out[0].partial), (1, 10, false));
        assert_eq!((out[1].req_bytes, out[1].resp_bytes, out[1].partial), (2, 20, false));
        assert!(out[2].request.is_none() && out[2].partial);
    }

    #[test]
    fn pending_is_capped() {
        let mut p = Pairer::new(Proto::Redis);
        for i in 0..(MAX_PENDING as u64 + 5) {
            p.request(half(i), Meta::default());
        }
        assert_eq!(p.pending(), MAX_PENDING);
        let out = p.take();
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|e| e.partial && e.response.is_none()));
        assert_eq!(out[0].req_bytes, 0);
    }

    #[test]
    fn doubt_until_drained() {
        let mut p = Pairer::new(Proto::Redis);
        p.request(half(1), Meta::default());
        p.doubt_next();
        p.request(half(2), Meta::default());
        p.response(half(10));
        p.response(half(20));
        p.request(half(3), Meta::default());
        p.response(half(30));
        p.request(half(4), Meta::default());
        p.request(half(5), Meta::default());
        p.doubt_all();
        p.response(half(40));
        p.response(half(50));
        let out = p.take();
        let partial: Vec<bool> = out.iter().map(|e| e.partial).collect();
        assert_eq!(partial, [false, true, false, true, true]);
    }
}
