//! The cgroup source: every container runtime without an API sluice
//! speaks (containerd, CRI-O, Podman, Kubernetes pods) is found from the
//! cgroup paths of /proc (`cri-containerd-<id>.scope`, `crio-<id>.scope`,
//! `libpod-<id>.scope`, `/kubepods/.../pod<uid>/<id>`, ...). A scan runs
//! every [`EVERY`] and at once when [`Trigger`] fires (the interface
//! watcher fires it when a veth appears or goes: a container starting or
//! stopping). Docker's containers are left to the Docker source while it
//! is connected, and found here (by id, without names) while it is not.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::Notify;

use super::{Container, Pod, Registry, Source};

/// How often the cgroups are scanned without a trigger.
pub const EVERY: Duration = Duration::from_secs(5);

/// Asks for a scan now.
pub type Trigger = Arc<Notify>;

/// Keeps the registry's cgroup-found containers current, forever.
pub async fn run(reg: Arc<Registry>, trigger: Trigger) {
    reg.set_source(Source::Cgroups, "connected", "scanning /proc for container cgroups");
    loop {
        let r = reg.clone();
        let found = tokio::task::spawn_blocking(move || scan(&r)).await.unwrap_or_default();
        reg.replace(Source::Cgroups, found);
        reg.mark_scanned();
        tokio::select! {
            _ = trigger.notified() => {
                // A burst of link events (a container brings up several
                // interfaces) makes one scan.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One scan: the containers the cgroups show, with their network side.
pub fn scan(reg: &Registry) -> Vec<Container> {
    let docker = reg.connected(Source::Docker);
    let host = reg.host();
    let mut out = Vec::new();
    for f in host.scan() {
        if docker && f.runtime == "docker" {
            continue;
        }
        let Some(&pid) = f.pids.first() else { continue };
        let mut c = Container {
            name: f.id[..12.min(f.id.len())].to_string(),
            id: f.id,
            runtime: f.runtime,
            image: String::new(),
            labels: BTreeMap::new(),
            running: true,
            pid: Some(pid),
            cgroup: Some(f.cgroup),
            cgroup_id: f.cgroup_id,
            netns: None,
            host_network: false,
            interfaces: Vec::new(),
            addrs: Vec::new(),
            pod: f.pod_uid.map(|uid| Pod {
                uid,
                name: None,
                namespace: None,
            }),
        };
        if let Some(p) = &c.pod {
            c.labels.insert("io.kubernetes.pod.uid".into(), p.uid.clone());
        }
        match host.net_of(pid) {
            Ok(net) => {
                c.netns = Some(net.netns);
                c.host_network = net.host_network;
                c.interfaces = net.ifaces;
                c.addrs = net.addrs;
            }
            // It stopped during the scan.
            Err(_) => continue,
        }
        out.push(c);
    }
    out
}
