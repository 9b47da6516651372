//! The Docker source: the Engine API on a unix socket (bollard). It
//! subscribes to the event stream first, then lists every container (so no
//! event between the two is lost), inspects the running ones, and from
//! then on re-inspects a container on each of its events (start, die,
//! destroy, rename, restart, network connect/disconnect). A lost
//! connection is retried every [`RETRY`]; while Docker is unreachable its
//! containers stay as last seen and `status` says so.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bollard::{
    models::{ContainerInspectResponse, EventMessage},
    query_parameters::{EventsOptions, ListContainersOptions},
    Docker,
};
use futures::StreamExt;

use super::{Container, Registry, Source};

/// How often an unreachable Docker is tried again.
pub const RETRY: Duration = Duration::from_secs(2);

/// Events that can change what sluice knows of a container.
const CONTAINER_EVENTS: &[&str] = &[
    "create", "start", "restart", "die", "stop", "kill", "destroy", "rename", "pause", "unpause", "update",
];

/// Keeps the registry's Docker containers current, forever.
pub async fn run(reg: Arc<Registry>, socket: PathBuf) {
    loop {
        if !socket.exists() {
            reg.set_source(Source::Docker, "absent", format!("no socket at {}", socket.display()));
            tokio::time::sleep(RETRY).await;
            continue;
        }
        match session(&reg, &socket).await {
            Ok(()) => reg.set_source(Source::Docker, "unreachable", "the event stream ended"),
            Err(e) => reg.set_source(Source::Docker, "unreachable", format!("{}: {e}", socket.display())),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection: list, then follow events until the stream ends.
async fn session(reg: &Arc<Registry>, socket: &Path) -> Result<(), bollard::errors::Error> {
    let docker = Docker::connect_with_unix(&socket.to_string_lossy(), 30, bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await?;
    let version = docker.version().await?;
    let filters = HashMap::from([("type".to_string(), vec!["container".to_string(), "network".to_string()])]);
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await?;
    let mut all = Vec::new();
    for s in list {
        let Some(id) = s.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(i) => all.extend(container_of(reg, &i)),
            Err(e) => tracing::debug!(id, error = %e, "container vanished while listing"),
        }
    }
    let n = all.len();
    reg.replace(Source::Docker, all);
    reg.set_source(
        Source::Docker,
        "connected",
        format!(
            "Docker {} (API {}) at {}, {n} containers",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default(),
            socket.display()
        ),
    );
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if let Some(id) = affected(&ev) {
            refresh(reg, &docker, &id, ev.action.as_deref() == Some("destroy")).await;
        }
    }
    Ok(())
}

/// The container an event is about, if it can change what we know.
fn affected(ev: &EventMessage) -> Option<String> {
    let action = ev.action.as_deref()?;
    let actor = ev.actor.as_ref()?;
    let typ = ev.typ.map(|t| t.to_string()).unwrap_or_default();
    match typ.as_str() {
        "container" if CONTAINER_EVENTS.iter().any(|a| action.starts_with(a)) => actor.id.clone(),
        "network" if action == "connect" || action == "disconnect" => {
            actor.attributes.as_ref()?.get("container").cloned()
        }
        _ => None,
    }
}

/// Re-reads one container (or forgets it).
async fn refresh(reg: &Arc<Registry>, docker: &Docker, id: &str, destroyed: bool) {
    if destroyed {
        reg.remove(id);
        return;
    }
    match docker.inspect_container(id, None).await {
        Ok(i) => match container_of(reg, &i) {
            Some(c) => reg.upsert(Source::Docker, c),
            None => reg.remove(id),
        },
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => reg.remove(id),
        Err(e) => tracing::warn!(id, error = %e, "inspecting a container after its event"),
    }
}

/// What sluice keeps of an inspected container: the network side comes
/// from its namespace (host-side interfaces and addresses), with Docker's
/// own idea of its addresses as the fallback.
fn container_of(reg: &Registry, i: &ContainerInspectResponse) -> Option<Container> {
    let id = i.id.clone()?;
    let state = i.state.as_ref();
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let pid = state
        .and_then(|s| s.pid)
        .filter(|p| *p > 0 && running)
        .and_then(|p| u32::try_from(p).ok());
    let config = i.config.as_ref();
    let labels: BTreeMap<String, String> = config
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let host_network = i
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .is_some_and(|m| m == "host");
    let mut c = Container {
        name: i
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id[..12.min(id.len())].to_string()),
        id,
        runtime: "docker".into(),
        image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
        labels,
        running,
        pid,
        cgroup: None,
        cgroup_id: None,
        netns: None,
        host_network,
        interfaces: Vec::new(),
        addrs: Vec::new(),
        pod: None,
    };
    if let Some(pid) = pid {
        let host = reg.host();
        c.cgroup = host.cgroup_of(pid);
        c.cgroup_id = c.cgroup.as_deref().and_then(|p| host.cgroup_id(p));
        match host.net_of(pid) {
            Ok(net) => {
                c.netns = Some(net.netns);
                c.host_network |= net.host_network;
                c.interfaces = net.ifaces;
                c.addrs = net.addrs;
            }
            Err(e) => tracing::debug!(name = c.name, error = %e, "reading the container's network namespace"),
        }
        if c.addrs.is_empty() && !c.host_network {
            c.addrs = docker_addrs(i);
        }
    }
    Some(c)
}

/// The addresses Docker reports for a container's networks.
fn docker_addrs(i: &ContainerInspectResponse) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = i
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flat_map(|nets| nets.values())
        .flat_map(|e| [e.ip_address.as_deref(), e.global_ipv6_address.as_deref()])
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect();
    v.sort();
    v.dedup();
    v
}
