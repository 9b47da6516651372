//! `sluice run` and `sluice down`: the daemon's lifecycle. `run` validates
//! everything that can be validated before touching the kernel (config, lock,
//! state database), then loads and reconciles the dataplane, attaches, and
//! serves the API until SIGINT/SIGTERM. Stopping leaves every pin in place,
//! so enforcement continues; `down` stops the daemon and removes the pins.

use std::{
    fs,
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use sluice::{
    api::{self, Ctl},
    config::Config,
    dataplane::{self, Dataplane},
    events::{read_ring, run_jsonl, Decoder, Hub, JsonlSink},
    firewall::Firewall,
    limits::Limiter,
    nat::Nat,
    probes::{ProbeKind, ProbeStates},
    store::Store,
    watch::Watcher,
};
use tokio::net::UnixListener;

/// Holds `state_dir/sluice.lock` (flock) for the daemon's lifetime; the file
/// holds the daemon's pid for `sluice down`.
struct PidLock {
    _file: fs::File,
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sluice.lock")
}

fn take_lock(state_dir: &Path) -> Result<PidLock> {
    let path = lock_path(state_dir);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        bail!(
            "another sluice daemon is running (pid {}) with state dir {}",
            pid.trim(),
            state_dir.display()
        );
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(PidLock { _file: f })
}

/// flock on the pin directory itself (bpffs directories accept it): one
/// daemon per set of pins, whatever its state dir.
fn lock_pin_dir(pin_dir: &Path) -> Result<fs::File> {
    sluice::dataplane::ensure_bpffs(pin_dir)?;
    fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let f = fs::File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another sluice daemon is using the pins in {}", pin_dir.display());
    }
    Ok(f)
}

/// The pid of a running daemon (one that holds the lock), if any.
fn running_pid(state_dir: &Path) -> Option<i32> {
    let mut f = fs::File::open(lock_path(state_dir)).ok()?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return None; // nobody holds it
    }
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels with memcg accounting",
            std::io::Error::last_os_error()
        );
    }
}

/// The bound API socket's path, unlinked on drop.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Refuses a socket path that names anything but a socket (the daemon
/// removes a stale socket before binding; it must never remove a file).
fn not_a_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => bail!(
            "{} exists and is not a socket; refusing to replace it (choose another --socket)",
            path.display()
        ),
        _ => Ok(()),
    }
}

async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        not_a_socket(path)?;
        // Only a socket nobody listens on is stale (ECONNREFUSED); another
        // kind of socket, or one we may not reach, is left alone.
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => bail!("something is already serving {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => bail!(
                "{} exists and is not a stale sluice socket ({e}); not replacing it",
                path.display()
            ),
        }
        fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Create it private from the first instant: umask 077 during bind.
    // SAFETY: umask is process-wide but we are single-purpose here, at startup.
    let old = unsafe { libc::umask(0o077) };
    let l = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn run(cfg: Config) -> Result<()> {
    cfg.validate()?;
    let matcher = cfg.matcher()?;
    not_a_socket(&cfg.socket)?;
    if !cfg.state_dir.exists() {
        fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
        // Ours: private from the start.
        fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o700))?;
    } else if !cfg.state_dir.is_dir() {
        bail!("state dir {} is not a directory", cfg.state_dir.display());
    } else if fs::metadata(&cfg.state_dir)?.permissions().mode() & 0o022 != 0 {
        // An existing directory is the operator's: never chmod it, but a
        // group- or world-writable one would let others swap the database.
        bail!(
            "state dir {} is writable by group or others; chmod go-w it first",
            cfg.state_dir.display()
        );
    }
    let listen = cfg.listen_addr()?;
    let token = match &cfg.token_file {
        Some(p) => Some(sluice::api::guard::read_token(p)?),
        None => None,
    };
    let _lock = take_lock(&cfg.state_dir)?;
    let store = Store::open(&cfg.state_dir)?;
    let limit_store = Store::open(&cfg.state_dir)?;
    let nat_store = Store::open(&cfg.state_dir)?;
    let probe_states = ProbeStates::open(Store::open(&cfg.state_dir)?)?;
    raise_memlock();
    // Everything that can fail without touching the kernel fails here: the
    // pins are ours alone (another daemon with another state dir would
    // otherwise reconcile our tables away), and the socket is free.
    let _pin_lock = lock_pin_dir(&cfg.pin_dir)?;
    let listener = bind_socket(&cfg.socket).await?;
    // Removed however `run` ends, so a refused start leaves no stale socket.
    let _socket_file = SocketFile(cfg.socket.clone());
    let tcp = match listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the API listener {addr}"))?,
        ),
        None => None,
    };

    let t0 = Instant::now();
    let (dp, tables, limit_tables) = Dataplane::load(&cfg.pin_dir, cfg.capacity())?;
    let (fw, rec) = Firewall::open(store, Box::new(tables))?;
    let limiter = Limiter::open(limit_store, Box::new(limit_tables))?;
    let mut dp = dp;
    let nat_tables = dp.take_nat_tables()?.expect("a freshly loaded object has its TC maps");
    let (mut nat, nat_rec) = Nat::open(nat_store, Some(nat_tables))?;
    nat.set_l7(cfg.l7_capture_bytes, cfg.l7_detect, &cfg.l7_ports()?)?;
    if nat_rec.inactive_redirects > 0 {
        tracing::warn!(
            inactive = nat_rec.inactive_redirects,
            "some redirect rules name interfaces that do not exist (yet); they apply once the interface appears"
        );
    }
    tracing::info!(
        forwards = nat_rec.forwards,
        redirects = nat_rec.redirects,
        removed = nat_rec.removed,
        "forward and redirect tables reconciled with the store"
    );
    tracing::info!(
        pin_dir = %cfg.pin_dir.display(),
        kept = rec.kept, added = rec.added, removed = rec.removed, limits = limiter.count(),
        "dataplane loaded and rule tables reconciled with the store"
    );
    let mut event_maps = dp
        .take_event_maps()?
        .expect("a freshly loaded object has its event maps");
    event_maps.configure(cfg.packet_sample_every, cfg.drop_events_per_sec)?;
    let ring = event_maps.take_ring().expect("ring taken once");
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
    let dp = Arc::new(Mutex::new(dp));
    let watcher = Watcher::new(dp.clone(), matcher).start().await?;
    {
        let dp = dp.lock().unwrap();
        let ifs: Vec<String> = dp
            .attachments()
            .map(|a| {
                let mode = a.mode().map_or("xdp disabled".into(), |m| format!("{m:?}"));
                format!("{}({mode}{})", a.name, if a.adopted { ", adopted" } else { "" }).to_lowercase()
            })
            .collect();
        tracing::info!(interfaces = %ifs.join(" "), globs = %cfg.interfaces.join(","), "XDP firewall attached in {:?}", t0.elapsed());
    }

    let hub = Hub::new(cfg.event_history);
    let retention = sluice::audit::Retention {
        max_age: cfg.l7_retention()?,
        max_records: cfg.l7_max_records,
    };
    let audit = match cfg.l7_capture_bytes {
        0 => None,
        _ => {
            let a = sluice::audit::AuditStore::open(&cfg.state_dir, retention)?;
            sluice::audit::prune_now(&a, retention)?;
            tracing::info!(path = %a.path().display(), bytes_per_packet = cfg.l7_capture_bytes, "L7 audit log");
            Some(a)
        }
    };
    let state = Arc::new(Ctl {
        fw: Mutex::new(fw),
        limits: Mutex::new(limiter),
        nat: Mutex::new(nat),
        audit,
        hub: hub.clone(),
        events: Some(Mutex::new(event_maps)),
        requests: Mutex::new(Default::default()),
        shutdown: tokio::sync::watch::channel(false).0,
        dp: Some(dp.clone()),
        started: Instant::now(),
        probes: Mutex::new(probe_states),
        probe_stats: Mutex::new(None),
        interface_globs: cfg.interfaces.clone(),
        pin_dir: cfg.pin_dir.display().to_string(),
        state_dir: cfg.state_dir.display().to_string(),
    });
    state.sync_conn_table();
    let nat_gc = tokio::spawn(nat_housekeeping(state.clone()));
    let mut decoder = Decoder::new(state.clone());
    decoder.audit = Some(sluice::audit::Audit::new(state.audit.clone()));
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
    let audit_store = state.audit.clone();
    let limit = api::guard::RateLimit::new(cfg.api_rate_per_sec, cfg.api_burst);
    let guarded = |token: Option<String>| {
        let g = api::guard::Guard {
            limit: limit.clone(),
            token: token.map(Into::into),
        };
        api::app(state.clone()).layer(axum::middleware::from_fn_with_state(g, api::guard::check))
    };
    let tcp_task = match tcp {
        Some(l) => {
            let app = guarded(token);
            tracing::info!(addr = %l.local_addr()?, "also serving the API over TCP (bearer token required: {})", cfg.token_file.is_some());
            Some(tokio::spawn(api::serve::serve(l, app, stopping.shutdown.subscribe())))
        }
        None => None,
    };
    let unix = tokio::spawn(api::serve::serve(
        listener,
        guarded(None),
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
    nat_gc.abort();
    reader.abort();
    if let Some(a) = &audit_store {
        if !a.flush(Duration::from_secs(5)) {
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
async fn nat_housekeeping(state: Arc<Ctl>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let s = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut nat = s.nat.lock().unwrap();
            let gone = nat.gc()?;
            nat.refresh_redirects()?;
            Ok::<_, sluice::nat::NatError>(gone)
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

/// `sluice down`: stop the daemon if one runs, then detach and unpin.
pub fn down(state_dir: &Path, pin_dir: &Path, socket: &Path, json: bool) -> Result<()> {
    sluice::config::check_pin_dir(pin_dir).map_err(anyhow::Error::msg)?;
    sluice::config::check_path("state_dir", state_dir).map_err(anyhow::Error::msg)?;
    sluice::config::check_path("socket", socket).map_err(anyhow::Error::msg)?;
    let mut stopped = None;
    if let Some(pid) = running_pid(state_dir) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while running_pid(state_dir).is_some() {
            if Instant::now() > deadline {
                bail!("daemon (pid {pid}) did not stop within 10 s; not removing its pins");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stopped = Some(pid);
    }
    let removed = dataplane::teardown(pin_dir)?;
    // A daemon killed with -9 leaves its socket: remove it if it is a socket
    // nobody answers on (never anything else).
    let stale_socket = {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
        // Only a socket nobody listens on (ECONNREFUSED): never another
        // kind of socket (a datagram one gives EPROTOTYPE), nor a live one.
        is_socket
            && std::os::unix::net::UnixStream::connect(socket)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            && fs::remove_file(socket).is_ok()
    };
    let db = state_dir.join("sluice.db");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "stopped_pid": stopped,
                "removed": removed,
                "stale_socket_removed": stale_socket.then(|| socket.display().to_string()),
                "rules_kept_in": db.display().to_string(),
            })
        );
        return Ok(());
    }
    if let Some(pid) = stopped {
        println!("stopped the sluice daemon (pid {pid})");
    }
    if removed.is_empty() {
        println!(
            "nothing pinned in {}: the dataplane was already down",
            pin_dir.display()
        );
    }
    for line in removed {
        println!("{line}");
    }
    if stale_socket {
        println!("removed the stale socket {}", socket.display());
    }
    println!("rules are kept in {}; `sluice run` restores them", db.display());
    Ok(())
}
