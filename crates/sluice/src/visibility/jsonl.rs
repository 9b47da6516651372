//! The JSON Lines event log (`events_jsonl` in the config): every event,
//! one JSON object per line, rotated by size.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::broadcast;

use super::{event::Event, hub::Hub};

/// Appends every event to a JSON Lines file, rotating it by size:
/// `file` → `file.1` → ... → `file.keep` (the oldest is removed).
pub struct JsonlSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: fs::File,
    size: u64,
}

/// Opens the log for appending: created 0600 (events name processes,
/// addresses and containers), never through a symlink.
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl JsonlSink {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_private(path)?;
        let size = file.metadata()?.len();
        Ok(JsonlSink {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            file,
            size,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            fs::rename(&self.path, self.rotated(1))?;
            self.file = open_private(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    pub fn write(&mut self, e: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Feeds the JSONL sink from the hub; counts what it falls behind on.
pub async fn run_jsonl(mut sink: JsonlSink, hub: Arc<Hub>) {
    let (mut rx, guard) = hub.subscribe();
    loop {
        match rx.recv().await {
            Ok(e) => {
                guard.took();
                if let Err(err) = sink.write(&e) {
                    tracing::error!(error = %err, path = %sink.path.display(), "writing the JSONL event log");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                guard.lagged(n);
                tracing::warn!(lost = n, "JSONL event log fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_abi::EvConn;

    use super::*;
    use crate::{sys::time::Clock, visibility::decode::conn_event};

    #[test]
    fn jsonl_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.jsonl");
        let mut sink = JsonlSink::open(&path, 4096, 2).unwrap();
        let e = Event::Conn(conn_event(
            &EvConn {
                family: 4,
                ..Default::default()
            },
            &Clock::new(),
        ));
        for _ in 0..200 {
            sink.write(&e).unwrap();
        }
        for p in [
            path.clone(),
            dir.path().join("ev.jsonl.1"),
            dir.path().join("ev.jsonl.2"),
        ] {
            let len = fs::metadata(&p).unwrap().len();
            assert!(len > 0 && len <= 4096, "{} is {len} bytes", p.display());
            for line in fs::read_to_string(&p).unwrap().lines() {
                serde_json::from_str::<Event>(line).unwrap();
            }
        }
        assert!(!dir.path().join("ev.jsonl.3").exists());
    }
}
