//! The rule store: SQLite under the state directory (`sluice.db`), the
//! source of truth for every rule. The kernel maps are compiled from it on
//! start and on every change. The schema carries a version: older versions
//! are migrated in a transaction; a database from an unknown (newer)
//! version, or one that is not a sluice database, is refused with a clear
//! error instead of being guessed at.
//!
//! The store knows rows, not rules: each capability turns its own rows into
//! its own types (a firewall rule has columns; limits, forwards and
//! redirects are a JSON spec plus a kernel slot). The L7 audit log has its
//! own database, [`audit`].

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub mod audit;

/// Version of the schema this build writes and reads.
pub const SCHEMA_VERSION: i64 = 4;

/// A table of rules kept as a JSON spec plus a kernel slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonTable {
    Limits,
    Forwards,
    Redirects,
}

impl JsonTable {
    fn name(self) -> &'static str {
        match self {
            JsonTable::Limits => "limits",
            JsonTable::Forwards => "forwards",
            JsonTable::Redirects => "redirects",
        }
    }
}

/// A row of `fw_rules`, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwRow {
    pub id: i64,
    pub action: String,
    pub dir: String,
    pub cidr: String,
    pub slot: i64,
    pub comment: Option<String>,
    /// Unix seconds.
    pub created: i64,
}

/// A row of a [`JsonTable`], as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonRow {
    pub id: i64,
    pub slot: i64,
    pub spec: String,
    /// Unix seconds.
    pub created: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("state database has schema version {found}, this sluice understands {SCHEMA_VERSION}; upgrade sluice or move the database away")]
    Version { found: i64 },
    #[error("state database is not a sluice database (or is corrupt): {0}")]
    Foreign(String),
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database holds an invalid row (id {id}): {why}")]
    BadRow { id: i64, why: String },
}

pub struct Store {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fw_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL CHECK (action IN ('allow', 'deny')),
    dir TEXT NOT NULL CHECK (dir IN ('src', 'dst')),
    cidr TEXT NOT NULL,
    slot INTEGER NOT NULL UNIQUE,
    comment TEXT,
    created INTEGER NOT NULL,
    UNIQUE (action, dir, cidr)
);
CREATE TABLE IF NOT EXISTS limits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slot INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forwards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slot INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS redirects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slot INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (
    id TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1))
);
";

impl Store {
    /// Opens (creating if needed) `sluice.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("sluice.db");
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    #[cfg(any(test, feature = "test-support"))]
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A garbage file fails here ("file is not a database").
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| {
                r.get(0)
            })
            .map_err(|e| StoreError::Foreign(e.to_string()))?;
        if tables > 0 {
            let has_meta: bool = conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !has_meta {
                return Err(StoreError::Foreign("no meta table".into()));
            }
            let found: Option<String> = conn
                .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
                .optional()?;
            let found = found
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| StoreError::Foreign("missing schema_version".into()))?;
            // v1 -> v2 -> v3 -> v4 only added tables (limits; forwards and
            // redirects; probe states), created below.
            if !(1..=SCHEMA_VERSION).contains(&found) {
                return Err(StoreError::Version { found });
            }
        }
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        // Create/migrate and stamp the version in one transaction.
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )?;
        tx.commit()?;
        Ok(Store { conn })
    }

    /// Ids of the probes the operator disabled, sorted.
    pub fn disabled_probes(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM probes WHERE enabled = 0 ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a probe's state. Enabled is the default, so enabling deletes
    /// the row.
    pub fn set_probe_enabled(&self, id: &str, enabled: bool) -> Result<(), StoreError> {
        if enabled {
            self.conn.execute("DELETE FROM probes WHERE id = ?1", params![id])?;
        } else {
            self.conn.execute(
                "INSERT OR REPLACE INTO probes (id, enabled) VALUES (?1, 0)",
                params![id],
            )?;
        }
        Ok(())
    }

    /// Every firewall rule, ordered by id.
    pub fn fw_rows(&self) -> Result<Vec<FwRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, action, dir, cidr, slot, comment, created FROM fw_rules ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(FwRow {
                id: r.get(0)?,
                action: r.get(1)?,
                dir: r.get(2)?,
                cidr: r.get(3)?,
                slot: r.get(4)?,
                comment: r.get(5)?,
                created: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every row of a JSON-spec table, ordered by id.
    pub fn json_rows(&self, table: JsonTable) -> Result<Vec<JsonRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, slot, spec, created FROM {} ORDER BY id",
            table.name()
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(JsonRow {
                id: r.get(0)?,
                slot: r.get(1)?,
                spec: r.get(2)?,
                created: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Starts a transaction; rules are written through [`StoreTx`].
    pub fn begin(&mut self) -> Result<StoreTx<'_>, StoreError> {
        Ok(StoreTx {
            tx: self.conn.transaction()?,
        })
    }
}

/// A write transaction: nothing is visible until [`StoreTx::commit`].
pub struct StoreTx<'a> {
    tx: Transaction<'a>,
}

impl StoreTx<'_> {
    /// Adds a firewall rule; returns its id.
    pub fn insert_fw(
        &self,
        action: &str,
        dir: &str,
        cidr: &str,
        slot: u32,
        comment: Option<&str>,
        created: i64,
    ) -> Result<i64, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO fw_rules (action, dir, cidr, slot, comment, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        stmt.execute(params![action, dir, cidr, slot as i64, comment, created])?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn set_fw_comment(&self, id: i64, comment: Option<&str>) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("UPDATE fw_rules SET comment = ?2 WHERE id = ?1", params![id, comment])?;
        Ok(n == 1)
    }

    pub fn delete_fw(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM fw_rules WHERE id = ?1")?
            .execute(params![id])?;
        Ok(n == 1)
    }

    /// Adds a row to a JSON-spec table; returns its id.
    pub fn insert_json(&self, table: JsonTable, slot: u32, spec: &str, created: i64) -> Result<i64, StoreError> {
        self.tx.execute(
            &format!("INSERT INTO {} (slot, spec, created) VALUES (?1, ?2, ?3)", table.name()),
            params![slot as i64, spec, created],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn delete_json(&self, table: JsonTable, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .execute(&format!("DELETE FROM {} WHERE id = ?1", table.name()), params![id])?
            == 1)
    }

    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(tx: &StoreTx<'_>, action: &str, cidr: &str, slot: u32) -> Result<i64, StoreError> {
        tx.insert_fw(action, "src", cidr, slot, Some("t"), 100)
    }

    #[test]
    fn insert_list_delete_roundtrip() {
        let mut s = Store::in_memory().unwrap();
        let tx = s.begin().unwrap();
        let a = insert(&tx, "deny", "198.18.1.0/24", 0).unwrap();
        let b = insert(&tx, "allow", "2001:2::/48", 1).unwrap();
        tx.commit().unwrap();
        let rules = s.fw_rows().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, a);
        assert_eq!(rules[0].cidr, "198.18.1.0/24");
        assert_eq!(rules[1].action, "allow");
        assert_eq!(rules[1].slot, 1);
        let tx = s.begin().unwrap();
        assert!(tx.delete_fw(b).unwrap());
        assert!(!tx.delete_fw(b).unwrap());
        tx.commit().unwrap();
        assert_eq!(s.fw_rows().unwrap().len(), 1);
    }

    #[test]
    fn uncommitted_transaction_changes_nothing() {
        let mut s = Store::in_memory().unwrap();
        {
            let tx = s.begin().unwrap();
            insert(&tx, "deny", "10.0.0.0/8", 0).unwrap();
        }
        assert!(s.fw_rows().unwrap().is_empty());
    }

    #[test]
    fn duplicate_rule_and_slot_and_bad_columns_are_refused() {
        let mut s = Store::in_memory().unwrap();
        let tx = s.begin().unwrap();
        insert(&tx, "deny", "10.0.0.0/8", 0).unwrap();
        assert!(insert(&tx, "deny", "10.0.0.0/8", 1).is_err());
        assert!(insert(&tx, "deny", "11.0.0.0/8", 0).is_err());
        assert!(insert(&tx, "drop", "12.0.0.0/8", 2).is_err(), "action is checked");
    }
    #[test]
    fn persists_across_reopen_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            let tx = s.begin().unwrap();
            insert(&tx, "deny", "10.0.0.0/8", 7).unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.fw_rows().unwrap()[0].slot, 7);
        s.conn
            .execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", [])
            .unwrap();
        drop(s);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Version { found: 99 })
        ));
    }

    #[test]
    fn migrates_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("sluice.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '1');
                 CREATE TABLE fw_rules (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, dir TEXT NOT NULL,
                   cidr TEXT NOT NULL, slot INTEGER NOT NULL UNIQUE, comment TEXT, created INTEGER NOT NULL,
                   UNIQUE (action, dir, cidr));
                 INSERT INTO fw_rules (action, dir, cidr, slot, created) VALUES ('deny', 'src', '10.0.0.0/8', 0, 1);",
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.fw_rows().unwrap().len(), 1);
        assert!(s.json_rows(JsonTable::Limits).unwrap().is_empty());
        let v: String = s
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION.to_string());
    }

    #[test]
    fn json_rows_roundtrip() {
        let mut s = Store::in_memory().unwrap();
        let tx = s.begin().unwrap();
        let id = tx.insert_json(JsonTable::Forwards, 5, "{\"x\":1}", 9).unwrap();
        tx.commit().unwrap();
        let rows = s.json_rows(JsonTable::Forwards).unwrap();
        assert_eq!(
            rows,
            vec![JsonRow {
                id,
                slot: 5,
                spec: "{\"x\":1}".into(),
                created: 9
            }]
        );
        assert!(s.json_rows(JsonTable::Redirects).unwrap().is_empty());
        let tx = s.begin().unwrap();
        assert!(tx.delete_json(JsonTable::Forwards, id).unwrap());
        tx.commit().unwrap();
        assert!(s.json_rows(JsonTable::Forwards).unwrap().is_empty());
    }

    #[test]
    fn refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sluice.db"),
            b"this is not sqlite, just some bytes that go on for a while....",
        )
        .unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Foreign(_))));
    }
}
