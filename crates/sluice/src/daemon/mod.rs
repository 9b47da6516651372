//! `sluice run` and `sluice down`: the daemon's lifecycle, and the one
//! place that wires every layer together. `run` validates everything that
//! can be validated before touching the kernel (config, locks, state
//! database, socket), then loads and reconciles the dataplane, attaches,
//! starts the event pipeline and serves the API until SIGINT/SIGTERM.
//! Stopping leaves every pin in place, so enforcement continues; `down`
//! stops the daemon and removes the pins.

pub mod config;
mod down;
mod lock;
mod socket;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use config::Config;
pub use down::{down, Down, Serving};

use crate::{
    api,
    containers::{self, Registry, SysHost},
    control::{hooks::SharedHooks, probes::ProbeStates, watch::Watcher, Ctl},
    dataplane::{Dataplane, ProbeKind},
    firewall::Firewall,
    forward::Forwarder,
    limits::Limiter,
    store::{
        audit::{AuditStore, Retention},
        Store,
    },
    sys,
    visibility::{
        decode::Decoder,
        hub::Hub,
        jsonl::{run_jsonl, JsonlSink},
        l7::{L7Log, L7Metrics, L7Stage},
        pipeline::read_ring,
        tables::{CaptureTables, EventTables},
    },
};

/// Every file the daemon keeps in its state directory, checked before any
/// is opened: a regular file owned by the daemon's user, never a symlink,
/// tightened to 0600 if an older build left it looser.
const STATE_FILES: &[&str] = &[
    "sluice.lock",
    "sluice.db",
    "sluice.db-wal",
    "sluice.db-shm",
    "sluice.db-journal",
    "l7.db",
    "l7.db-wal",
    "l7.db-shm",
    "l7.db-journal",
];

pub async fn run(cfg: Config) -> Result<()> {
    cfg.validate()?;
    let matcher = cfg.matcher()?;
    socket::not_a_socket(&cfg.socket)?;
    // Everything the daemon creates from here on is its own: 0600 files,
    // 0700 directories (the socket, databases, lock, event log, pins).
    // SAFETY: umask(2) has no preconditions; nothing else runs yet.
    unsafe { libc::umask(0o077) };
    sys::paths::private_dir("state_dir", &cfg.state_dir).map_err(anyhow::Error::msg)?;
    for f in STATE_FILES {
        sys::paths::private_file(&cfg.state_dir.join(f)).map_err(anyhow::Error::msg)?;
    }
    let listen = cfg.listen_addr()?;
    let token = match &cfg.token_file {
        Some(p) => Some(api::guard::read_token(p)?),
        None => None,
    };
    let _lock = lock::take_lock(&cfg.state_dir)?;
    let store = || Store::open(&cfg.state_dir);
    let (fw_store, limit_store, forward_store) = (store()?, store()?, store()?);
    let probe_states = ProbeStates::open(store()?)?;
    sys::raise_memlock();
    // Everything that can fail without touching the kernel fails here: the
    // pins are ours alone (another daemon with another state dir would
    // otherwise reconcile our tables away), and the socket is free.
    let _pin_lock = lock::lock_pin_dir(&cfg.pin_dir)?;
    let listener = socket::bind_socket(&cfg.socket).await?;
    // Removed however `run` ends, so a refused start leaves no stale socket.
    let _socket_file = socket::SocketFile(cfg.socket.clone());
    let tcp = match listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the API listener {addr}"))?,
        ),
        None => None,
    };

    let t0 = Instant::now();
    let (mut dp, maps) = Dataplane::load(&cfg.pin_dir, cfg.capacity())?;
    let registry = Registry::new(Arc::new(SysHost));
    let (fw, rec) = Firewall::open_with(fw_store, Box::new(maps.firewall), registry.clone())?;
    let limiter = Limiter::open(limit_store, Box::new(maps.limits))?;
    let (forward, fwd_rec) = Forwarder::open(forward_store, Box::new(maps.forward))?;
    let mut capture: Box<dyn CaptureTables> = Box::new(maps.l7);
    capture.configure(cfg.l7_capture_bytes, cfg.l7_detect, &cfg.l7_ports()?)?;
    if fwd_rec.inactive_redirects > 0 {
        tracing::warn!(
            inactive = fwd_rec.inactive_redirects,
            "some redirect rules name interfaces that do not exist (yet); they apply once the interface appears"
        );
    }
    tracing::info!(
        forwards = fwd_rec.forwards,
        redirects = fwd_rec.redirects,
        removed = fwd_rec.removed,
        "forward and redirect tables reconciled with the store"
    );
    tracing::info!(
        pin_dir = %cfg.pin_dir.display(),
        kept = rec.kept, added = rec.added, removed = rec.removed, limits = limiter.count(),
        "dataplane loaded and rule tables reconciled with the store"
    );
    let mut events = maps.events;
    events.configure(cfg.packet_sample_every, cfg.drop_events_per_sec)?;
    let ring = events.take_ring().expect("a freshly loaded object has its ring");
    dp.set_disabled(probe_states.disabled().clone());
    if !probe_states.disabled().is_empty() {
        let ids: Vec<String> = probe_states.disabled().iter().map(|p| p.to_string()).collect();
        tracing::info!(probes = %ids.join(" "), "probes disabled by the operator (`sluice probes enable ID` turns one back on)");
    }
    if !dp.wants(ProbeKind::Trace, sluice_abi::trace::TRACEPOINT) {
        tracing::info!("connection log disabled (trace/inet_sock_set_state)");
    } else {
        match dp.attach_trace() {
            Ok(()) => tracing::info!("connection log attached to sock/inet_sock_set_state"),
            Err(e) => tracing::error!(error = %e, "connection log unavailable (the firewall and limits still work)"),
        }
    }
    let hooks: SharedHooks = Arc::new(Mutex::new(dp));
    let rescan = Arc::new(tokio::sync::Notify::new());
    let watcher = Watcher::new(hooks.clone(), matcher)
        .notify(rescan.clone())
        .start()
        .await?;
    let mut sources = vec![tokio::spawn(containers::discover::run(registry.clone(), rescan))];
    if cfg.docker_socket.as_os_str().is_empty() {
        registry.set_source(
            containers::Source::Docker,
            "off",
            "docker_socket is empty in the config",
        );
    } else {
        sources.push(tokio::spawn(containers::docker::run(
            registry.clone(),
            cfg.docker_socket.clone(),
        )));
    }
    {
        let ifs: Vec<String> = hooks
            .lock()
            .unwrap()
            .interfaces()
            .iter()
            .map(|a| {
                let mode = a.mode.map_or("xdp disabled".into(), |m| format!("{m:?}"));
                format!("{}({mode}{})", a.name, if a.adopted { ", adopted" } else { "" }).to_lowercase()
            })
            .collect();
        tracing::info!(interfaces = %ifs.join(" "), globs = %cfg.interfaces.join(","), "XDP firewall attached in {:?}", t0.elapsed());
    }

    let hub = Hub::with_identity(cfg.event_history, registry.clone());
    let l7 = match cfg.l7_capture_bytes {
        0 => None,
        _ => {
            let retention = Retention {
                max_age: cfg.l7_retention()?,
                max_records: cfg.l7_max_records,
            };
            let store = AuditStore::open(&cfg.state_dir, retention)?;
            store.prune_now(retention)?;
            tracing::info!(path = %store.path().display(), bytes_per_packet = cfg.l7_capture_bytes, "L7 audit log");
            Some(Arc::new(L7Log::new(store)))
        }
    };
    let l7_metrics = L7Metrics::default();
    let events: Box<dyn EventTables> = Box::new(events);
    let state = Arc::new(Ctl {
        fw: Mutex::new(fw),
        limits: Mutex::new(limiter),
        forward: Mutex::new(forward),
        probes: Mutex::new(probe_states),
        hooks,
        events: Mutex::new(events),
        hub: hub.clone(),
        l7: l7.clone(),
        l7_metrics: l7_metrics.clone(),
        requests: Mutex::new(Default::default()),
        shutdown: tokio::sync::watch::channel(false).0,
        started: Instant::now(),
        probe_stats: Mutex::new(None),
        interface_globs: cfg.interfaces.clone(),
        pin_dir: cfg.pin_dir.display().to_string(),
        state_dir: cfg.state_dir.display().to_string(),
        containers: registry.clone(),
    });
    state.sync_conn_table();
    let forward_gc = tokio::spawn(forward_housekeeping(state.clone()));
    sources.push(tokio::spawn(crate::control::resolve::follow(state.clone())));
    let mut decoder = Decoder::new(state.clone());
    decoder.l7 = Some(L7Stage::new(l7.clone(), l7_metrics));
    let reader = tokio::spawn(read_ring(ring, hub.clone(), decoder));
    let jsonl = match &cfg.events_jsonl {
        Some(path) => {
            let sink = JsonlSink::open(path, cfg.events_jsonl_max_bytes, cfg.events_jsonl_keep)
                .with_context(|| format!("opening the event log {}", path.display()))?;
            tracing::info!(path = %path.display(), "writing events as JSON Lines");
            Some(tokio::spawn(run_jsonl(sink, hub.clone())))
        }
        None => None,
    };
    tracing::info!(socket = %cfg.socket.display(), "serving the API; `sluice status` to check, Ctrl-C to stop");
    let stopping = state.clone();
    let limit = api::guard::RateLimit::new(cfg.api_rate_per_sec, cfg.api_burst);
    let guarded = |token: Option<String>, addr: Option<std::net::SocketAddr>| {
        let g = api::guard::Guard {
            limit: limit.clone(),
            token: token.map(Into::into),
            hosts: addr.map(api::guard::listener_hosts),
        };
        api::app(state.clone()).layer(axum::middleware::from_fn_with_state(g, api::guard::check))
    };
    let tcp_task = match tcp {
        Some(l) => {
            let app = guarded(token, Some(l.local_addr()?));
            tracing::info!(addr = %l.local_addr()?, "also serving the API over TCP (bearer token and Host header required)");
            Some(tokio::spawn(api::serve::serve(l, app, stopping.shutdown.subscribe())))
        }
        None => None,
    };
    let unix = tokio::spawn(api::serve::serve(
        listener,
        guarded(None, None),
        stopping.shutdown.subscribe(),
    ));
    shutdown_signal().await;
    // Stops both listeners and ends the event streams (or the drain would
    // wait on them forever).
    let _ = stopping.shutdown.send(true);
    let _ = unix.await;
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    watcher.abort();
    for s in sources {
        s.abort();
    }
    forward_gc.abort();
    reader.abort();
    if let Some(log) = &l7 {
        if !log.store().flush(Duration::from_secs(5)) {
            tracing::warn!("the audit log writer did not catch up within 5 s; some L7 records are not stored");
        }
    }
    if let Some(j) = jsonl {
        j.abort();
    }
    tracing::info!(
        "stopped; enforcement continues from the pins in {} (`sluice down` removes them)",
        cfg.pin_dir.display()
    );
    Ok(())
}

/// Every few seconds: expire forwarding state by TCP state and age, and
/// re-resolve redirect interfaces (containers come and go with new ifindexes).
async fn forward_housekeeping(state: Arc<Ctl>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let s = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut f = s.forward.lock().unwrap();
            let gone = f.gc()?;
            f.refresh_redirects()?;
            Ok::<_, crate::forward::ForwardError>(gone)
        })
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => tracing::debug!(expired = n, "forwarding state expired"),
            Ok(Err(e)) => tracing::warn!(error = %e, "forwarding housekeeping"),
            _ => {}
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
