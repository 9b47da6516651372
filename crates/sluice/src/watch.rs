//! The interface watcher: subscribes to netlink link events, attaches the XDP
//! firewall to every interface whose name matches the configured globs, both
//! those present at start and those that appear later, and forgets
//! interfaces that vanish, move to another namespace or are renamed out of
//! the globs. Subscribing happens before the initial dump, so no interface
//! can slip between the two.

use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use globset::GlobSet;
use rtnetlink::{
    constants::RTMGRP_LINK,
    packet_core::NetlinkPayload,
    packet_route::{link::LinkAttribute, link::LinkMessage, RouteNetlinkMessage},
    sys::{AsyncSocket, SocketAddr},
};

use crate::dataplane::Dataplane;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// Attached interfaces, and interfaces that matched but could not be
/// attached (with the reason), reported once per interface.
pub struct Watcher {
    dp: Arc<Mutex<Dataplane>>,
    matcher: GlobSet,
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

impl Watcher {
    pub fn new(dp: Arc<Mutex<Dataplane>>, matcher: GlobSet) -> Self {
        Watcher { dp, matcher }
    }

    fn on_link(&self, ifindex: u32, name: &str) {
        let mut dp = self.dp.lock().unwrap();
        let attached = dp.attachments().any(|a| a.ifindex == ifindex);
        let wanted = self.matcher.is_match(name);
        match (attached, wanted) {
            (false, true) => {
                if let Err(e) = dp.attach(ifindex, name) {
                    tracing::warn!(ifindex, name, error = %e, "cannot attach the XDP firewall");
                }
            }
            (true, true) => dp.rename(ifindex, name),
            (true, false) => {
                dp.detach(ifindex);
            }
            (false, false) => dp.forget_failed(ifindex),
        }
    }

    /// Subscribes, attaches to every matching interface present now, removes
    /// pinned links nobody claims, then spawns the event loop.
    pub async fn start(self) -> Result<tokio::task::JoinHandle<()>, WatchError> {
        let (mut conn, handle, mut events) = rtnetlink::new_connection()?;
        conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        tokio::spawn(conn);

        let mut links = handle.link().get().execute();
        while let Some(msg) = links.try_next().await? {
            if let Some(name) = name_of(&msg) {
                self.on_link(msg.header.index, &name);
            }
        }
        for ifindex in self.dp.lock().unwrap().prune_unowned() {
            tracing::info!(ifindex, "removed a pinned link for an interface no longer managed");
        }

        Ok(tokio::spawn(async move {
            while let Some((msg, _)) = events.next().await {
                match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        if let Some(name) = name_of(&link) {
                            self.on_link(link.header.index, &name);
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        self.dp.lock().unwrap().detach(link.header.index);
                    }
                    _ => {}
                }
            }
            tracing::error!("netlink event stream ended; new interfaces will not be attached");
        }))
    }
}
