//! The L7 audit log's own database, `l7.db` in the state directory: one row
//! per paired request and response (the record as JSON, with its time and
//! protocol for queries), written by one thread from a bounded queue whose
//! overflow is counted, and kept within a retention by age and by count.
//! The store is generic over the record type: it serialises records on its
//! writer thread, off the caller's path, and never knows what they are.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::sys::time::unix_ns;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("audit database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("starting the audit writer: {0}")]
    Thread(std::io::Error),
}

/// Retention of the audit store.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_records: u64,
}

/// One record to store: its time (ns since the Unix epoch), its protocol
/// and the record itself (stored as JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow<T> {
    pub ts_ns: u64,
    pub proto: &'static str,
    pub record: T,
}

/// The writer's progress, for metrics and for [`AuditStore::flush`].
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// Rows queued for the writer.
    pub queued: AtomicU64,
    /// Rows written (or failed to write: logged).
    pub stored: AtomicU64,
    /// Rows not queued because the writer fell behind (queue full).
    pub dropped: AtomicU64,
}

/// The L7 audit log in SQLite (`l7.db` in the state directory). Writes go
/// through one writer thread fed by a bounded queue; reads open their own
/// connection (WAL mode lets them run alongside the writer).
pub struct AuditStore<T> {
    path: PathBuf,
    tx: mpsc::SyncSender<AuditRow<T>>,
    pub counters: Arc<AuditCounters>,
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

impl<T: Serialize + Send + 'static> AuditStore<T> {
    /// Opens (creating) `dir/l7.db` and starts the writer thread.
    pub fn open(dir: &Path, retention: Retention) -> Result<Arc<Self>, AuditError> {
        let path = dir.join("l7.db");
        let writer = open_db(&path)?;
        let reader = open_db(&path)?;
        let (tx, rx) = mpsc::sync_channel::<AuditRow<T>>(STORE_QUEUE);
        let counters = Arc::new(AuditCounters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("sluice-l7-store".into())
            .spawn(move || write_loop(writer, rx, retention, &c.stored))
            .map_err(AuditError::Thread)?;
        Ok(Arc::new(AuditStore {
            path,
            tx,
            counters,
            reader: Mutex::new(reader),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a row; a full queue drops it and counts the drop.
    pub fn push(&self, r: AuditRow<T>) {
        match self.tx.try_send(r) {
            Ok(()) => self.counters.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Waits (up to `timeout`) until every queued record is written: the
    /// daemon's shutdown, so no record paired before it is lost.
    pub fn flush(&self, timeout: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while self.counters.stored.load(Ordering::Relaxed) < self.counters.queued.load(Ordering::Relaxed) {
            if t0.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Records as JSON in the order of their time (`ts_ns`, then as
    /// written), oldest first: the newest `limit` matching the filters. A
    /// record written late (its exchange took long) still lists by its
    /// time. The `l7_ts` index holds (ts_ns, id) in this very order.
    pub fn query(&self, proto: Option<&str>, since_ns: Option<u64>, limit: usize) -> Result<Vec<String>, AuditError> {
        let c = self.reader.lock().unwrap();
        let mut stmt = c.prepare_cached(
            "SELECT record FROM l7 WHERE (?1 IS NULL OR proto = ?1) AND ts_ns >= ?2 \
             ORDER BY ts_ns DESC, id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![proto, since_ns.unwrap_or(0) as i64, limit as i64], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Number of stored records.
    #[cfg(any(test, feature = "test-support"))]
    pub fn count(&self) -> Result<u64, AuditError> {
        let c = self.reader.lock().unwrap();
        Ok(c.query_row("SELECT count(*) FROM l7", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

fn write_loop<T: Serialize>(mut c: Connection, rx: mpsc::Receiver<AuditRow<T>>, ret: Retention, stored: &AtomicU64) {
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
                    let json = serde_json::to_string(&r.record).expect("a record serialises");
                    stmt.execute(params![r.ts_ns as i64, r.proto, json])?;
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
    let cutoff = unix_ns().saturating_sub(ret.max_age.as_nanos() as u64);
    c.execute("DELETE FROM l7 WHERE ts_ns < ?1", params![cutoff as i64])?;
    c.execute(
        "DELETE FROM l7 WHERE id <= (SELECT max(id) FROM l7) - ?1",
        params![ret.max_records as i64],
    )?;
    Ok(())
}

impl<T> AuditStore<T> {
    /// Applies the retention now (the daemon's start, and tests).
    pub fn prune_now(&self, ret: Retention) -> Result<(), AuditError> {
        let c = self.reader.lock().unwrap();
        Ok(prune(&c, ret)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_queries_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention {
            max_age: Duration::from_secs(3600),
            max_records: 5,
        };
        let s = AuditStore::open(dir.path(), ret).unwrap();
        let now = unix_ns();
        for i in 0..8u64 {
            s.push(AuditRow {
                ts_ns: now - 1000 + i,
                proto: if i % 2 == 0 { "http" } else { "redis" },
                record: i,
            });
        }
        let t0 = std::time::Instant::now();
        while s.counters.stored.load(Ordering::Relaxed) < 8 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.count().unwrap(), 8);
        let http = s.query(Some("http"), None, 100).unwrap();
        assert_eq!(http, vec!["0", "2", "4", "6"]);
        assert_eq!(s.query(None, Some(now - 1000 + 6), 100).unwrap().len(), 2);
        assert_eq!(s.query(None, None, 3).unwrap().len(), 3);
        // Written out of time order (a slow exchange finishes after a
        // quick later one): listed by time, equal times as written.
        for (ts, r) in [(now - 500, 10), (now - 700, 11), (now - 500, 12), (now - 600, 13)] {
            s.push(AuditRow {
                ts_ns: ts,
                proto: "mysql",
                record: r,
            });
        }
        assert!(s.flush(Duration::from_secs(5)));
        assert_eq!(s.query(Some("mysql"), None, 100).unwrap(), vec!["11", "13", "10", "12"]);
        assert_eq!(
            s.query(Some("mysql"), None, 2).unwrap(),
            vec!["10", "12"],
            "the newest by time"
        );
        s.prune_now(ret).unwrap();
        assert_eq!(s.count().unwrap(), 5, "the oldest beyond max_records go");
        let ret = Retention {
            max_age: Duration::from_nanos(1),
            max_records: 5,
        };
        s.prune_now(ret).unwrap();
        assert_eq!(s.count().unwrap(), 0, "everything is older than 1 ns");
    }
}

#[cfg(test)]
mod writer_speed {
    use super::*;

    #[test]
    #[ignore = "a throughput probe that prints, not a check: cargo test -p sluice --lib writer_throughput -- --ignored --nocapture"]
    fn writer_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let ret = Retention {
            max_age: Duration::from_secs(3600),
            max_records: 1_000_000,
        };
        let s = AuditStore::open(dir.path(), ret).unwrap();
        // A typical HTTP record's size.
        let r = AuditRow {
            ts_ns: unix_ns(),
            proto: "http",
            record: serde_json::json!({"request": "x".repeat(380), "status": "200"}),
        };
        let t0 = std::time::Instant::now();
        let n = 200_000u64;
        let mut sent = 0;
        while sent < n {
            if s.tx.try_send(r.clone()).is_ok() {
                s.counters.queued.fetch_add(1, Ordering::Relaxed);
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
