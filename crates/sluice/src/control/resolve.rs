//! Rules that follow containers: whenever the container registry changes
//! (a container starts, stops, moves, is renamed or relabelled; a source
//! connects), every capability re-resolves its selector rules and puts the
//! new addresses in the kernel. Nothing is resolved before every source
//! has answered once: until then (a daemon restart, Docker not answering
//! yet) the kernel keeps the last resolution, so a restart opens no gap.

use std::sync::Arc;

use super::Ctl;

impl Ctl {
    /// Re-resolves every selector rule now (if the registry is settled).
    pub fn resolve_selectors(&self) {
        if !self.containers.settled() {
            return;
        }
        match self.fw.lock().unwrap().resolve_all() {
            Ok(n) if n > 0 => tracing::info!(entries = n, "firewall: selector rules follow their containers"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "firewall: re-resolving selector rules"),
        }
    }
}

/// Follows the registry forever.
pub async fn follow(ctl: Arc<Ctl>) {
    let mut rx = ctl.containers.subscribe();
    loop {
        let c = ctl.clone();
        let _ = tokio::task::spawn_blocking(move || c.resolve_selectors()).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}
