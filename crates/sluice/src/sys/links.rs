//! Network interfaces as they come and go, from rtnetlink: a subscription
//! to link events plus a dump of the links present now. Subscribing happens
//! before the dump, so no interface can slip between the two.

use futures::{channel::mpsc::UnboundedReceiver, StreamExt, TryStreamExt};
use rtnetlink::{
    constants::RTMGRP_LINK,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{link::LinkAttribute, link::LinkMessage, RouteNetlinkMessage},
    sys::{AsyncSocket, SocketAddr},
};

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// A change to the interfaces of this namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface exists (new, changed or renamed) with this name.
    Present { ifindex: u32, name: String },
    /// It is gone (deleted or moved to another namespace).
    Gone { ifindex: u32 },
}

/// Link events after the subscription, in order.
pub struct LinkEvents {
    rx: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl LinkEvents {
    /// The next event; None once the netlink socket is gone.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        while let Some((msg, _)) = self.rx.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    if let Some(name) = name_of(&link) {
                        return Some(LinkEvent::Present {
                            ifindex: link.header.index,
                            name,
                        });
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    return Some(LinkEvent::Gone {
                        ifindex: link.header.index,
                    })
                }
                _ => {}
            }
        }
        None
    }
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Subscribes to link events, then lists the interfaces present now as
/// (ifindex, name). Must run inside a tokio runtime (it spawns the socket).
pub async fn subscribe() -> Result<(Vec<(u32, String)>, LinkEvents), LinksError> {
    let (mut conn, handle, rx) = rtnetlink::new_connection()?;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    tokio::spawn(conn);
    let mut present = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await? {
        if let Some(name) = name_of(&msg) {
            present.push((msg.header.index, name));
        }
    }
    Ok((present, LinkEvents { rx }))
}
