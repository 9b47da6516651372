//! The interface watcher: attaches the probes to every interface whose name
//! matches the configured globs, both those present at start and those that
//! appear later, and forgets interfaces that vanish, move to another
//! namespace or are renamed out of the globs. Link events come from
//! [`crate::sys::links`]. An interface whose hook someone else holds
//! (another sluice daemon, another tool) is left alone and tried again
//! every [`RETRY_EVERY`], so it is taken over once the other owner lets go.

use std::{sync::Arc, time::Duration};

use globset::GlobSet;

use super::hooks::SharedHooks;
use crate::sys::links::{self, LinkEvent, LinksError};

/// How often interfaces that could not be attached are tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Keeps the attachments equal to the interfaces matching the globs.
pub struct Watcher {
    hooks: SharedHooks,
    matcher: GlobSet,
    /// Fired on every interface that appears or goes: a container may have
    /// started or stopped (the container discovery rescans).
    on_change: Option<Arc<tokio::sync::Notify>>,
}

impl Watcher {
    pub fn new(hooks: SharedHooks, matcher: GlobSet) -> Self {
        Watcher {
            hooks,
            matcher,
            on_change: None,
        }
    }

    /// Fires `n` whenever an interface appears, goes or is renamed.
    pub fn notify(mut self, n: Arc<tokio::sync::Notify>) -> Self {
        self.on_change = Some(n);
        self
    }

    fn changed(&self) {
        if let Some(n) = &self.on_change {
            n.notify_one();
        }
    }

    fn on_link(&self, ifindex: u32, name: &str) {
        let mut h = self.hooks.lock().unwrap();
        let attached = h.is_attached(ifindex);
        let wanted = self.matcher.is_match(name);
        match (attached, wanted) {
            (false, true) => {
                if let Err(e) = h.attach(ifindex, name) {
                    let owner = h
                        .failed()
                        .into_iter()
                        .find(|f| f.ifindex == ifindex)
                        .and_then(|f| f.owner);
                    match owner {
                        Some(o) => {
                            tracing::warn!(ifindex, name, error = %e, owner = %o, "not attached: the hook has another owner; trying again every {}s", RETRY_EVERY.as_secs())
                        }
                        None => {
                            tracing::warn!(ifindex, name, error = %e, "cannot attach the XDP firewall; trying again every {}s", RETRY_EVERY.as_secs())
                        }
                    }
                }
            }
            (true, true) => h.rename(ifindex, name),
            (true, false) => h.detach(ifindex),
            (false, false) => h.forget_failed(ifindex),
        }
    }

    /// Subscribes, attaches to every matching interface present now, removes
    /// pinned links nobody claims, then spawns the event loop.
    pub async fn start(self) -> Result<tokio::task::JoinHandle<()>, LinksError> {
        let (present, mut events) = links::subscribe().await?;
        for (ifindex, name) in present {
            self.on_link(ifindex, &name);
        }
        for ifindex in self.hooks.lock().unwrap().prune_unowned() {
            tracing::info!(ifindex, "removed a pinned link for an interface no longer managed");
        }
        let this = Arc::new(self);
        let hooks = this.hooks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETRY_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let h = hooks.clone();
                // Attaching makes blocking syscalls and may walk /proc.
                let done = tokio::task::spawn_blocking(move || h.lock().unwrap().retry_failed()).await;
                for (ifindex, name) in done.unwrap_or_default() {
                    tracing::info!(ifindex, name, "attached: the hook's other owner let go of it");
                }
            }
        });
        Ok(tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match ev {
                    LinkEvent::Present { ifindex, name } => this.on_link(ifindex, &name),
                    LinkEvent::Gone { ifindex } => this.hooks.lock().unwrap().detach(ifindex),
                }
                this.changed();
            }
            tracing::error!("netlink event stream ended; new interfaces will not be attached");
        }))
    }
}
