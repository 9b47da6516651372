//! The rule store: SQLite under the state directory, the source of truth for
//! every rule. The kernel maps are compiled from it on start and on every
//! change. The schema carries a version: older versions are migrated in a
//! transaction; a database from an unknown (newer) version, or one that is
//! not a sluice database, is refused with a clear error instead of being
//! guessed at.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{
    limits::{Limit, LimitSpec},
    rules::{Action, Direction, Rule, RuleKey, RuleSpec},
};

/// Version of the schema this build writes and reads.
pub const SCHEMA_VERSION: i64 = 4;

/// Tables of rules kept as a JSON spec plus a kernel slot.
pub const FORWARDS: &str = "forwards";
pub const REDIRECTS: &str = "redirects";

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
    pub fn rules(&self) -> Result<Vec<Rule>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, action, dir, cidr, slot, comment, created FROM fw_rules ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, action, dir, cidr, slot, comment, created) = row?;
            let bad = |why: String| StoreError::BadRow { id, why };
            let spec = RuleSpec {
                action: action.parse::<Action>().map_err(bad)?,
                dir: dir.parse::<Direction>().map_err(bad)?,
                cidr: cidr.parse().map_err(|e: crate::rules::RuleError| bad(e.to_string()))?,
                comment,
            };
            let slot = u32::try_from(slot).map_err(|_| bad(format!("slot {slot} out of range")))?;
            out.push(Rule {
                id,
                slot,
                spec,
                created,
            });
        }
        Ok(out)
    }

    /// Every limit rule, ordered by id.
    pub fn limits(&self) -> Result<Vec<Limit>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, slot, spec, created FROM limits ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, slot, spec, created) = row?;
            let bad = |why: String| StoreError::BadRow { id, why };
            let spec: LimitSpec = serde_json::from_str(&spec).map_err(|e| bad(e.to_string()))?;
            let slot = u16::try_from(slot)
                .ok()
                .filter(|s| (*s as u32) < sluice_abi::MAX_LIMITS);
            let slot = slot.ok_or_else(|| bad("slot out of range".into()))?;
            out.push(Limit {
                id,
                slot,
                spec,
                created,
            });
        }
        Ok(out)
    }

    /// Every row of a JSON-spec table ([`FORWARDS`], [`REDIRECTS`]):
    /// (id, slot, spec, created), ordered by id.
    pub fn json_rows(&self, table: &'static str) -> Result<Vec<(i64, u32, String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT id, slot, spec, created FROM {table} ORDER BY id"))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, slot, spec, created) = row?;
            let slot = u32::try_from(slot).map_err(|_| StoreError::BadRow {
                id,
                why: format!("slot {slot} out of range"),
            })?;
            out.push((id, slot, spec, created));
        }
        Ok(out)
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
    pub fn insert(&self, spec: &RuleSpec, slot: u32, created: i64) -> Result<i64, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO fw_rules (action, dir, cidr, slot, comment, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        stmt.execute(params![
            spec.action.as_str(),
            spec.dir.as_str(),
            spec.cidr.to_string(),
            slot as i64,
            spec.comment,
            created
        ])?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn set_comment(&self, id: i64, comment: Option<&str>) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("UPDATE fw_rules SET comment = ?2 WHERE id = ?1", params![id, comment])?;
        Ok(n == 1)
    }

    pub fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM fw_rules WHERE id = ?1")?
            .execute(params![id])?;
        Ok(n == 1)
    }

    pub fn insert_limit(&self, spec: &LimitSpec, slot: u16, created: i64) -> Result<i64, StoreError> {
        let json = serde_json::to_string(spec).expect("a limit spec serialises");
        self.tx.execute(
            "INSERT INTO limits (slot, spec, created) VALUES (?1, ?2, ?3)",
            params![slot as i64, json, created],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn delete_limit(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.tx.execute("DELETE FROM limits WHERE id = ?1", params![id])? == 1)
    }

    pub fn insert_json(&self, table: &'static str, slot: u32, spec: &str, created: i64) -> Result<i64, StoreError> {
        self.tx.execute(
            &format!("INSERT INTO {table} (slot, spec, created) VALUES (?1, ?2, ?3)"),
            params![slot as i64, spec, created],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn delete_json(&self, table: &'static str, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .execute(&format!("DELETE FROM {table} WHERE id = ?1"), params![id])?
            == 1)
    }

    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }
}

impl RuleKey {
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.action.as_str(), self.dir.as_str(), self.cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(a: Action, c: &str) -> RuleSpec {
        RuleSpec::new(a, c, false, Some("t".into())).unwrap()
    }

    #[test]
    fn insert_list_delete_roundtrip() {
        let mut s = Store::in_memory().unwrap();
        let tx = s.begin().unwrap();
        let a = tx.insert(&spec(Action::Deny, "198.18.1.0/24"), 0, 100).unwrap();
        let b = tx.insert(&spec(Action::Allow, "2001:2::/48"), 1, 101).unwrap();
        tx.commit().unwrap();
        let rules = s.rules().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, a);
        assert_eq!(rules[0].spec.cidr.to_string(), "198.18.1.0/24");
        assert_eq!(rules[1].spec.action, Action::Allow);
        assert_eq!(rules[1].slot, 1);
        let tx = s.begin().unwrap();
        assert!(tx.delete(b).unwrap());
        assert!(!tx.delete(b).unwrap());
        tx.commit().unwrap();
        assert_eq!(s.rules().unwrap().len(), 1);
    }

    #[test]
    fn uncommitted_transaction_changes_nothing() {
        let mut s = Store::in_memory().unwrap();
        {
            let tx = s.begin().unwrap();
            tx.insert(&spec(Action::Deny, "10.0.0.0/8"), 0, 1).unwrap();
        }
        assert!(s.rules().unwrap().is_empty());
    }

    #[test]
    fn duplicate_rule_and_slot_are_refused() {
        let mut s = Store::in_memory().unwrap();
        let tx = s.begin().unwrap();
        tx.insert(&spec(Action::Deny, "10.0.0.0/8"), 0, 1).unwrap();
        assert!(tx.insert(&spec(Action::Deny, "10.0.0.0/8"), 1, 1).is_err());
        assert!(tx.insert(&spec(Action::Deny, "11.0.0.0/8"), 0, 1).is_err());
    }

    #[test]
    fn persists_across_reopen_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            let tx = s.begin().unwrap();
            tx.insert(&spec(Action::Deny, "10.0.0.0/8"), 7, 1).unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.rules().unwrap()[0].slot, 7);
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
        assert_eq!(s.rules().unwrap().len(), 1);
        assert!(s.limits().unwrap().is_empty());
        let v: String = s
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION.to_string());
    }

    #[test]
    fn limits_roundtrip() {
        let mut s = Store::in_memory().unwrap();
        let spec = crate::limits::LimitRequest {
            pps: Some(10),
            per_source: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let tx = s.begin().unwrap();
        let id = tx.insert_limit(&spec, 5, 9).unwrap();
        tx.commit().unwrap();
        let l = &s.limits().unwrap()[0];
        assert_eq!((l.id, l.slot, &l.spec), (id, 5, &spec));
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
