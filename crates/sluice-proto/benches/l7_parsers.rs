//! Throughput of the L7 parsers (`sluice_proto::l7`). Run with
//! `cargo bench -p sluice-proto --bench l7_parsers` (release profile, no root needed, a few
//! seconds).
//!
//! For each protocol a large synthetic connection is built by repeating the
//! recorded fixtures (`src/l7/testdata/*.c2s|s2c`; for MySQL the command
//! phase only, after the handshake) up to [`TARGET`] bytes over both
//! directions. Both streams are fed to one [`Conn`] in [`MSS`]-byte
//! segments, the server stream trailing the client stream by one repetition
//! so that every reply comes after its request. The best of [`ROUNDS`] runs
//! is printed as a Markdown table: bytes/s over both directions, exchanges/s
//! and messages/s (a request and its reply are two messages). It asserts only
//! that every repetition yields the same, complete exchanges.

use std::{hint::black_box, time::Instant};

use sluice_proto::l7::{Conn, Dir, Exchange, Proto};

/// Bytes over both directions per protocol.
const TARGET: usize = 64 << 20;
/// Segment size fed per call (a typical TCP MSS).
const MSS: usize = 1448;
/// Runs per protocol; the fastest counts.
const ROUNDS: usize = 3;

struct Fixture {
    proto: Proto,
    c2s: &'static [u8],
    s2c: &'static [u8],
}

/// The MySQL streams without their connection phase: client packets from the
/// first command (sequence 0), server packets from the first reply
/// (sequence 1).
fn mysql_commands(s: &'static [u8], first_seq: u8) -> &'static [u8] {
    let mut i = 0;
    while i + 4 <= s.len() {
        if s[i + 3] == first_seq {
            return &s[i..];
        }
        i += 4 + (s[i] as usize | (s[i + 1] as usize) << 8 | (s[i + 2] as usize) << 16);
    }
    &s[s.len()..]
}

fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            proto: Proto::Http,
            c2s: include_bytes!("../src/l7/testdata/http_keepalive.c2s"),
            s2c: include_bytes!("../src/l7/testdata/http_keepalive.s2c"),
        },
        Fixture {
            proto: Proto::Redis,
            c2s: include_bytes!("../src/l7/testdata/redis_pipeline.c2s"),
            s2c: include_bytes!("../src/l7/testdata/redis_pipeline.s2c"),
        },
        Fixture {
            proto: Proto::Mysql,
            c2s: mysql_commands(include_bytes!("../src/l7/testdata/mysql_session.c2s"), 0),
            s2c: mysql_commands(include_bytes!("../src/l7/testdata/mysql_session.s2c"), 1),
        },
    ]
}

struct Run {
    secs: f64,
    exchanges: usize,
}

/// Feeds the repeated fixture, the server side one repetition behind, and returns the time taken and the exchanges seen.
fn run(f: &Fixture, c2s: &[u8], s2c: &[u8]) -> (Run, Vec<Exchange>) {
    let mut conn = Conn::new(f.proto);
    let mut exchanges = 0;
    let mut sample = Vec::new();
    let mut keep = |out: Vec<Exchange>, exchanges: &mut usize| {
        *exchanges += out.len();
        if sample.len() < 64 {
            sample.extend(out);
        } else {
            black_box(out);
        }
    };
    let (mut ci, mut si) = (0usize, 0usize);
    let mut ts = 0u64;
    let start = Instant::now();
    while ci < c2s.len() {
        let end = (ci + MSS).min(c2s.len());
        ts += 1000;
        keep(conn.feed(Dir::ToServer, ts, &c2s[ci..end]), &mut exchanges);
        ci = end;
        // Replies of every repetition the client has finished sending.
        let target = (ci / f.c2s.len()) * f.s2c.len();
        while si < target {
            let end = (si + MSS).min(target);
            ts += 1000;
            keep(conn.feed(Dir::ToClient, ts, &s2c[si..end]), &mut exchanges);
            si = end;
        }
    }
    while si < s2c.len() {
        let end = (si + MSS).min(s2c.len());
        keep(conn.feed(Dir::ToClient, ts, &s2c[si..end]), &mut exchanges);
        si = end;
    }
    keep(conn.flush(), &mut exchanges);
    let secs = start.elapsed().as_secs_f64();
    (Run { secs, exchanges }, sample)
}

fn main() {
    println!("L7 parser throughput: fixtures repeated to {} MiB over both directions, fed in {MSS}-byte segments, best of {ROUNDS}\n", TARGET >> 20);
    println!("| protocol | fixture bytes (c2s+s2c) | exchanges/fixture | stream MiB | time ms | MB/s | exchanges/s | messages/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in fixtures() {
        let per = f.c2s.len() + f.s2c.len();
        let reps = TARGET.div_ceil(per);
        let c2s = f.c2s.repeat(reps);
        let s2c = f.s2c.repeat(reps);
        // Exchanges of one repetition, for the checks.
        let (one, _) = run(&f, f.c2s, f.s2c);
        let mut best: Option<Run> = None;
        for _ in 0..ROUNDS {
            let (r, sample) = run(&f, &c2s, &s2c);
            assert_eq!(
                r.exchanges,
                one.exchanges * reps,
                "{}: exchanges per repetition",
                f.proto
            );
            assert!(
                sample.iter().all(|e| !e.partial && e.request.is_some()),
                "{}: a partial exchange",
                f.proto
            );
            if best.as_ref().is_none_or(|b| r.secs < b.secs) {
                best = Some(r);
            }
        }
        let best = best.expect("at least one round");
        let bytes = (c2s.len() + s2c.len()) as f64;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            f.proto,
            per,
            one.exchanges,
            bytes / (1 << 20) as f64,
            best.secs * 1e3,
            bytes / best.secs / 1e6,
            best.exchanges as f64 / best.secs,
            2.0 * best.exchanges as f64 / best.secs,
        );
    }
}
