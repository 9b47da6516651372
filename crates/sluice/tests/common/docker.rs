//! The real Docker tier's harness: a private `dockerd` from Debian's
//! `docker.io` (its own data root, exec root, pid file, config and socket in
//! a temp dir under /tmp, so images and containers vanish with it and a
//! system Docker's /var/lib/docker is never touched), a busybox image built
//! locally with `docker import` (nothing is pulled), CLI helpers, and a guard
//! that puts the host back exactly as it found it: iptables and ip6tables
//! (every table, policies included), the forwarding sysctls, `docker0` and
//! the bridges and veths dockerd made, the cgroups and run-time files it
//! left. It does so on drop, on panic, and when the start fails half-way.
//!
//! **One guard per test.** [`Docker::start`] takes [`HostLock`]: a flock on
//! `/tmp/sluice-docker-tests.lock`, so two test binaries never run two
//! dockerds, plus an in-process queue, so the tests of one binary (which
//! libtest runs in parallel threads) take turns. The lock is re-entrant on
//! its thread: a test holds it around the guard to compare the host before
//! and after ([`HostSnapshot`]). Nothing lives in a static (statics are never
//! dropped, which would leave dockerd running after a failed test), and the
//! guard cannot leave its thread (it is not `Send`).
//!
//! **A killed test process** cannot run a destructor. For that case:
//! dockerd is started with `PR_SET_PDEATHSIG` = SIGTERM (it stops its
//! containers and exits when the thread that started it dies), and the
//! guard writes what it saved to `/tmp/sluice-docker-tests.state.json`
//! before it changes anything; the next [`HostLock::acquire`] that finds the
//! file cleans up after the dead run before anything else happens.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{self, Read, Write},
    marker::PhantomData,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::{
        fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The image every test container runs: busybox-static and its applets.
pub const IMAGE: &str = "local/busybox:1";
/// The body of `/www/index.html` in [`IMAGE`].
pub const INDEX: &str = "sluice docker tier: hello from busybox httpd\n";

const LOCK_FILE: &str = "/tmp/sluice-docker-tests.lock";
const RECORD_FILE: &str = "/tmp/sluice-docker-tests.state.json";
/// Each guard's temp dir is /tmp/DIR_PREFIX<pid>-<n> (short: containerd's
/// socket paths below it must fit in a sockaddr_un).
const DIR_PREFIX: &str = "sluice-dk-";
/// How long dockerd may take to answer `docker info`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dockerd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest any one docker CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The busybox applets linked into `/bin` of [`IMAGE`].
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "httpd",
    "wget",
    "nc",
    "sleep",
    "ip",
    "ifconfig",
    "route",
    "ping",
    "ping6",
    "netstat",
    "nslookup",
    "telnet",
    "cat",
    "echo",
    "printf",
    "ls",
    "mkdir",
    "rm",
    "rmdir",
    "cp",
    "mv",
    "ln",
    "touch",
    "ps",
    "kill",
    "killall",
    "pidof",
    "true",
    "false",
    "test",
    "[",
    "env",
    "id",
    "hostname",
    "uname",
    "head",
    "tail",
    "grep",
    "sed",
    "awk",
    "tr",
    "wc",
    "sort",
    "uniq",
    "cut",
    "seq",
    "dd",
    "date",
    "timeout",
    "tee",
    "xargs",
    "yes",
    "stat",
    "sysctl",
    "mount",
    "umount",
    "sync",
    "hexdump",
    "od",
    "md5sum",
    "sha256sum",
    "du",
    "df",
    "find",
    "which",
    "top",
    "free",
    "usleep",
    "nproc",
];

// ---------------------------------------------------------------- the lock

struct LockState {
    owner: Option<ThreadId>,
    depth: usize,
    file: Option<File>,
}

static LOCK: Mutex<LockState> = Mutex::new(LockState {
    owner: None,
    depth: 0,
    file: None,
});
static LOCK_FREED: Condvar = Condvar::new();

/// The right to change the host's Docker-related state: held by one thread
/// of one process at a time (a flock on `/tmp/sluice-docker-tests.lock`
/// between processes, a queue between the threads of this one), re-entrant
/// on its thread. Its first acquisition in a process that finds the record
/// of a dead run cleans up after that run. Not `Send`: it is released on
/// the thread that took it.
pub struct HostLock {
    _not_send: PhantomData<MutexGuard<'static, ()>>,
}

impl HostLock {
    pub fn acquire() -> HostLock {
        let me = thread::current().id();
        let mut st = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        while st.owner.is_some_and(|o| o != me) {
            st = LOCK_FREED.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let first = st.owner.is_none();
        if first {
            // Blocking while holding the mutex is fine: every other thread
            // would wait for this lock anyway.
            st.file = Some(flock_exclusive(Path::new(LOCK_FILE)));
            st.owner = Some(me);
        }
        st.depth += 1;
        drop(st);
        let lock = HostLock { _not_send: PhantomData };
        if first {
            // A panic here releases the lock again (unwinding drops it).
            recover_dead_run();
        }
        lock
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let mut st = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        st.depth -= 1;
        if st.depth == 0 {
            st.owner = None;
            st.file = None; // closing the file releases the flock
            LOCK_FREED.notify_all();
        }
    }
}

fn flock_exclusive(path: &Path) -> File {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let m = f.metadata().unwrap();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert!(
        m.is_file() && std::os::unix::fs::MetadataExt::uid(&m) == me,
        "{} belongs to someone else: remove it",
        path.display()
    );
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return f;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            panic!("flock {}: {e}", path.display());
        }
    }
}

/// Where a dead run's record says its dockerd lived, if a test process died
/// with its Docker up and nobody has cleaned up after it yet.
pub fn dead_run_dir() -> Option<PathBuf> {
    read_record()?.ok().map(|s| s.dir)
}

/// The record of a dead run, if there is one. /tmp is everyone's: the file
/// must be a regular file of ours that nobody else may write, and name a
/// temp dir of this harness, or the record is refused.
fn read_record() -> Option<Result<Saved, String>> {
    let mut f = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(RECORD_FILE)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("open: {e}"))),
    };
    let mut check = || -> Result<Saved, String> {
        let m = f.metadata().map_err(|e| e.to_string())?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.is_file() || std::os::unix::fs::MetadataExt::uid(&m) != me || m.permissions().mode() & 0o022 != 0 {
            return Err("not a regular file of this user that only it may write".into());
        }
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let saved: Saved = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let name = saved.dir.strip_prefix("/tmp").ok().and_then(|n| n.to_str());
        if !name.is_some_and(|n| n.starts_with(DIR_PREFIX) && !n.contains('/')) {
            return Err(format!("names {} as its dir", saved.dir.display()));
        }
        Ok(saved)
    };
    Some(check())
}

fn recover_dead_run() {
    let saved = match read_record() {
        None => return,
        Some(Ok(s)) => s,
        Some(Err(e)) => panic!(
            "{RECORD_FILE} is refused ({e}): a Docker test run died and its cleanup record cannot be trusted; \
             check the host by hand (dockerd, docker0, iptables-save, ip_forward) and remove the file"
        ),
    };
    eprintln!(
        "docker harness: test process {} died with its dockerd up ({}); cleaning up after it",
        saved.owner_pid,
        saved.dir.display()
    );
    if let Err(problems) = teardown(&saved, None) {
        panic!(
            "could not clean up after a dead Docker test run; {RECORD_FILE} stays for the next try:\n  {}",
            problems.join("\n  ")
        );
    }
}

// ------------------------------------------------------ what is saved

/// Everything the guard changes, saved before it changes anything; also
/// the record a later run cleans up from if this process dies.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Saved {
    owner_pid: u32,
    /// The temp dir holding dockerd's data root, exec root, socket, log.
    dir: PathBuf,
    /// `iptables-save` and `ip6tables-save` output, keyed by the tool.
    netfilter: BTreeMap<String, String>,
    /// Sysctls dockerd changes (directly or through `ip_forward`), in the
    /// order they are restored in.
    sysctls: Vec<(PathBuf, String)>,
    /// Every network interface.
    links: BTreeSet<String>,
    /// Host paths dockerd creates things in: None if absent, else what was
    /// there (see [`watched_roots`]).
    paths: BTreeMap<PathBuf, Option<BTreeSet<PathBuf>>>,
}

/// (command, restore command, nft family).
const FAMILIES: [(&str, &str, &str); 2] = [
    ("iptables", "iptables-restore", "ip"),
    ("ip6tables", "ip6tables-restore", "ip6"),
];

fn save_cmd(tool: &str) -> String {
    format!("{tool}-save")
}

impl Saved {
    fn take(dir: &Path) -> Saved {
        let mut netfilter = BTreeMap::new();
        for (tool, _, _) in FAMILIES {
            let text = netfilter_save(tool).unwrap_or_else(|e| panic!("{e}"));
            netfilter.insert(tool.to_string(), text);
        }
        Saved {
            owner_pid: std::process::id(),
            dir: dir.to_path_buf(),
            netfilter,
            sysctls: restored_sysctls()
                .into_iter()
                .filter_map(|p| read_trim(&p).map(|v| (p, v)))
                .collect(),
            links: links(),
            paths: watched_roots()
                .into_iter()
                .map(|r| (r.clone(), list_tree(&r)))
                .collect(),
        }
    }

    fn write_record(&self) {
        let tmp = format!("{RECORD_FILE}.tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = File::options()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap_or_else(|e| panic!("create {tmp}: {e}"));
        f.write_all(serde_json::to_string_pretty(self).unwrap().as_bytes())
            .and_then(|_| f.sync_all())
            .unwrap_or_else(|e| panic!("write {tmp}: {e}"));
        fs::rename(&tmp, RECORD_FILE).unwrap_or_else(|e| panic!("rename {tmp}: {e}"));
    }
}

/// The sysctls the guard restores, in order: `ip_forward` and IPv6
/// `all/forwarding` first (writing them rewrites every interface's
/// `forwarding`, and IPv4's also `all/accept_redirects`), then every
/// interface's own values, then the bridge netfilter switches dockerd
/// turns on.
fn restored_sysctls() -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
        PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding"),
    ];
    for (fam, keys) in [
        ("ipv4", &["forwarding", "accept_redirects"][..]),
        ("ipv6", &["forwarding"][..]),
    ] {
        for iface in dir_names(Path::new(&format!("/proc/sys/net/{fam}/conf"))) {
            for k in keys {
                let p = PathBuf::from(format!("/proc/sys/net/{fam}/conf/{iface}/{k}"));
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
    }
    for k in [
        "bridge-nf-call-iptables",
        "bridge-nf-call-ip6tables",
        "bridge-nf-call-arptables",
    ] {
        v.push(PathBuf::from(format!("/proc/sys/net/bridge/{k}")));
    }
    v
}

/// Host paths dockerd (or its containerd, or runc) creates things in even
/// with a private data and exec root: its trust key in /etc/docker,
/// /run/docker/plugins, containerd's shim sockets in /run/containerd/s, and
/// a `docker` cgroup in every hierarchy. Paths that should never appear
/// (a system Docker's state) are watched too.
fn watched_roots() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [
        "/etc/docker",
        "/run/docker",
        "/run/containerd",
        "/run/docker.sock",
        "/run/docker.pid",
        "/var/lib/docker",
        "/var/lib/containerd",
        "/sys/fs/cgroup/docker",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for c in dir_names(Path::new("/sys/fs/cgroup")) {
        let p = Path::new("/sys/fs/cgroup").join(c);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            v.push(p.join("docker"));
        }
    }
    v
}

fn is_cgroup(p: &Path) -> bool {
    p.starts_with("/sys/fs/cgroup")
}

/// Everything below `root` (itself included), symlinks not followed; only
/// directories in a cgroup hierarchy (its files come and go with them).
fn list_tree(root: &Path) -> Option<BTreeSet<PathBuf>> {
    fs::symlink_metadata(root).ok()?;
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let is_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
        if is_dir || !is_cgroup(root) {
            out.insert(p.clone());
        }
        if is_dir {
            if let Ok(rd) = fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    Some(out)
}

// ------------------------------------------------------------- the guard

/// Knobs for [`Docker::start_with`].
#[derive(Default, Clone, Debug)]
pub struct Options {
    /// Extra `dockerd` flags (e.g. `--userland-proxy=false`).
    pub dockerd_args: Vec<String>,
    /// The busybox to build [`IMAGE`] from (default `/bin/busybox`, which
    /// must be busybox-static's).
    pub busybox: Option<PathBuf>,
}

/// A private dockerd and everything it changed on the host, all undone on
/// drop (see the module doc). Tests share nothing: each starts its own.
pub struct Docker {
    saved: Saved,
    socket: PathBuf,
    child: Option<Child>,
    /// Dropped after `Drop::drop` has put the host back.
    _lock: HostLock,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Docker {
    /// Starts a private dockerd and builds [`IMAGE`]. Panics (after putting
    /// the host back) if anything is missing or fails, if a dockerd already
    /// runs on this host, or if `docker0` already exists.
    pub fn start() -> Docker {
        Docker::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Docker {
        for tool in [
            "dockerd",
            "iptables-save",
            "ip6tables-save",
            "iptables-restore",
            "ip6tables-restore",
            "tar",
        ] {
            assert!(
                which(tool).is_some(),
                "`{tool}` not found: the Docker tier needs docker.io and busybox-static (scripts/setup.sh installs them)"
            );
        }
        assert!(
            Path::new(&docker_cli()).exists() || which("docker").is_some(),
            "no docker CLI found (scripts/setup.sh installs docker.io)"
        );
        let lock = HostLock::acquire();
        let running = dockerd_pids();
        assert!(
            running.is_empty(),
            "a dockerd is already running on this host (pids {running:?}): this harness starts its own and will not \
             share the host's firewall and docker0 with another; stop that one first"
        );
        assert!(
            !Path::new("/sys/class/net/docker0").exists(),
            "docker0 already exists: another Docker owns (or a crashed one left) this host's bridge; stop that \
             Docker or remove it (`ip link del docker0`) first"
        );
        assert!(
            !Path::new("/run/containerd/containerd.sock").exists(),
            "a system containerd's socket exists (/run/containerd/containerd.sock): dockerd would run the test \
             containers there, outside the harness's temp dir; stop that containerd first"
        );

        let dir = PathBuf::from(format!(
            "/tmp/{DIR_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        // First save, then change: the record exists before anything of
        // this run does, the temp dir included.
        let saved = Saved::take(&dir);
        saved.write_record();
        let mut d = Docker {
            socket: dir.join("docker.sock"),
            saved,
            child: None,
            _lock: lock,
        };
        // From here on a panic drops `d`, which puts the host back.
        if dir.exists() {
            // A leftover of an earlier process with the same pid.
            unmount_below(&dir);
            remove_tree(&dir).unwrap_or_else(|e| panic!("{e}"));
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let t0 = Instant::now();
        d.spawn_dockerd(&opts.dockerd_args);
        d.wait_ready();
        let t1 = Instant::now();
        d.build_image(opts.busybox.as_deref().unwrap_or(Path::new("/bin/busybox")));
        eprintln!(
            "docker harness: dockerd answered after {:.2?}, image built in {:.2?} ({})",
            t1 - t0,
            t1.elapsed(),
            d.saved.dir.display()
        );
        d
    }

    fn spawn_dockerd(&mut self, extra: &[String]) {
        let dir = &self.saved.dir;
        fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let log = File::create(dir.join("dockerd.log")).unwrap();
        let mut cmd = Command::new(which("dockerd").expect("dockerd (docker.io)"));
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            // Not /etc/docker/daemon.json: the host's settings stay out.
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                // If the thread that started it dies without the guard
                // (the test process killed), dockerd stops its containers
                // and exits; the next run cleans up the rest.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn dockerd: {e}")));
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "dockerd exited with {st} before answering; its log ends:\n{}",
                    self.log_tail(40)
                );
            }
            if self.socket.exists() {
                if let Ok(o) = output_within(&mut self.command(&["info"]), Duration::from_secs(5)) {
                    if o.status.success() {
                        return;
                    }
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                panic!(
                    "dockerd did not answer `docker info` within {START_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn build_image(&self, busybox: &Path) {
        match is_static_elf(busybox) {
            Ok(true) => {}
            Ok(false) => panic!(
                "{} is dynamically linked: the image has no libraries, install busybox-static",
                busybox.display()
            ),
            Err(e) => panic!("busybox at {}: {e} (install busybox-static)", busybox.display()),
        }
        let root = self.saved.dir.join("rootfs");
        for d in ["bin", "www", "etc", "tmp", "root", "proc", "sys", "dev"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::copy(busybox, root.join("bin/busybox")).unwrap();
        fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        for a in APPLETS {
            symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        fs::write(root.join("www/index.html"), INDEX).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let tar = self.saved.dir.join("rootfs.tar");
        let o = Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(o.status.success(), "tar: {}", String::from_utf8_lossy(&o.stderr));
        self.run(&["import", "--change", "CMD [\"sh\"]", tar.to_str().unwrap(), IMAGE]);
    }

    /// The private daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp dir holding the daemon's data and exec roots and its log.
    pub fn dir(&self) -> &Path {
        &self.saved.dir
    }

    /// A docker CLI command against the private daemon.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(docker_cli());
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            // The CLI's config (contexts, auth) stays in the temp dir too.
            .env("DOCKER_CONFIG", self.saved.dir.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        c
    }

    /// Runs the docker CLI; its output, whether it failed or not.
    pub fn try_run(&self, args: &[&str]) -> Output {
        output_within(&mut self.command(args), CLI_TIMEOUT).unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
    }

    /// Runs the docker CLI, which must succeed; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let o = self.try_run(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `docker run -d --name NAME IMAGE CMD...`; the container id.
    pub fn run_container(&self, name: &str, cmd: &[&str]) -> String {
        self.run_container_with(name, &[], cmd)
    }

    /// [`Docker::run_container`] with more `docker run` options.
    pub fn run_container_with(&self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(opts);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.run(&args).trim().to_string()
    }

    /// `docker inspect NAME`: the one object of its array.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.run(&["inspect", name])).unwrap();
        v.get(0)
            .cloned()
            .unwrap_or_else(|| panic!("docker inspect {name}: {v}"))
    }

    /// The container's IPv4 address (its first network's, for a container
    /// on a network of its own).
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        let v = self.inspect(name);
        let ns = &v["NetworkSettings"];
        let mut candidates = vec![ns["IPAddress"].as_str().unwrap_or("").to_string()];
        if let Some(nets) = ns["Networks"].as_object() {
            candidates.extend(nets.values().map(|n| n["IPAddress"].as_str().unwrap_or("").to_string()));
        }
        candidates
            .iter()
            .find_map(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("container {name} has no IPv4 address: {ns}"))
    }

    /// The host pid of the container's first process.
    pub fn pid(&self, name: &str) -> u32 {
        let v = self.inspect(name);
        v["State"]["Pid"]
            .as_u64()
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("container {name} is not running: {}", v["State"])) as u32
    }

    /// `docker exec NAME CMD...`, which must succeed; its stdout.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// `docker exec NAME CMD...`; its output, whether it failed or not.
    pub fn try_exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.try_run(&args)
    }

    /// `docker rm -f NAME`.
    pub fn rm(&self, name: &str) {
        self.run(&["rm", "-f", name]);
    }

    /// `docker restart -t 1 NAME` (the address may change). A busybox
    /// process as a container's pid 1 ignores SIGTERM, so the default 10 s
    /// grace would always run out: it gets SIGKILL after 1 s instead.
    pub fn restart(&self, name: &str) {
        self.run(&["restart", "-t", "1", name]);
    }

    /// The last `n` lines of dockerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.saved.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if panicking {
            eprintln!("dockerd log (last 30 lines):\n{}", self.log_tail(30));
        }
        let t0 = Instant::now();
        let result = teardown(&self.saved, self.child.as_mut());
        eprintln!("docker harness: host put back in {:.2?}", t0.elapsed());
        if let Err(problems) = result {
            let msg = format!(
                "the Docker harness could not put the host back; {RECORD_FILE} stays so the next run retries:\n  {}",
                problems.join("\n  ")
            );
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

// ------------------------------------------------------------- teardown

/// Puts the host back as `saved` found it and removes the temp dir; the
/// record file goes only if everything came back. Used by the guard's drop
/// (with its dockerd child) and for a dead run (without).
fn teardown(saved: &Saved, child: Option<&mut Child>) -> Result<(), Vec<String>> {
    let dir = &saved.dir;
    let mut problems = Vec::new();
    let socket = dir.join("docker.sock");

    // 1. Containers, while dockerd still answers.
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        let cli = |args: &[&str]| {
            let mut c = Command::new(docker_cli());
            c.arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .args(args)
                .env("DOCKER_CONFIG", dir.join("cli"))
                .stdin(Stdio::null());
            output_within(&mut c, Duration::from_secs(30))
        };
        if let Ok(o) = cli(&["ps", "-aq"]) {
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                match cli(&args) {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => problems.push(format!("docker rm -f: {}", String::from_utf8_lossy(&o.stderr).trim())),
                    Err(e) => problems.push(format!("docker rm -f: {e}")),
                }
            }
        }
    }

    // 2. dockerd: SIGTERM, then SIGKILL after STOP_TIMEOUT.
    if let Some(c) = child {
        if c.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child, which has not been reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > STOP_TIMEOUT {
                    eprintln!("docker harness: dockerd ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    // 3. Whatever is left of it: containerd, shims, container processes
    // (a killed shim's container lives on, so its descendants go too).
    kill_tree_mentioning(dir);
    let left = processes_of(dir);
    if !left.is_empty() {
        problems.push(format!("processes of {} still alive: {left:?}", dir.display()));
    }

    // 4. Mounts below the temp dir (overlays, shm, netns bind mounts).
    unmount_below(dir);
    let mounted = mounts_below(dir);
    if !mounted.is_empty() {
        problems.push(format!("still mounted: {mounted:?}"));
    }

    // 5. docker0, the br-* bridges and the veths dockerd made.
    for pass in 0..2 {
        for l in docker_links(&saved.links) {
            // Veths first (pass 0), then the bridges.
            let bridge = l == "docker0" || l.starts_with("br-");
            if bridge == (pass == 1) {
                let _ = Command::new("ip").args(["link", "del", &l]).output();
            }
        }
    }
    let left = docker_links(&saved.links);
    if !left.is_empty() {
        problems.push(format!("links left: {left:?}"));
    }

    // 6. The firewall, exactly (dockerd is gone and adds nothing any more).
    for (tool, restore, nft_family) in FAMILIES {
        if let Err(e) = netfilter_restore(tool, restore, nft_family, &saved.netfilter[tool]) {
            problems.push(e);
        }
    }

    // 7. Sysctls, in order (each write may have rewritten later ones).
    for (p, v) in &saved.sysctls {
        match read_trim(p) {
            Some(now) if now != *v => {
                if let Err(e) = fs::write(p, v) {
                    problems.push(format!("restore {}={v}: {e}", p.display()));
                }
            }
            _ => {} // the same, or the interface is gone
        }
    }
    for (p, v) in &saved.sysctls {
        if let Some(now) = read_trim(p) {
            if now != *v {
                problems.push(format!("{} is {now}, was {v}", p.display()));
            }
        }
    }

    // 8. Host paths: cgroups, shim sockets, /run/docker, the trust key.
    for (root, before) in &saved.paths {
        if let Err(e) = remove_new_paths(root, before.as_ref()) {
            problems.push(e);
        }
    }

    // 9. The temp dir, never through a mount.
    if mounts_below(dir).is_empty() {
        if let Err(e) = remove_tree(dir) {
            problems.push(e);
        }
    }

    if problems.is_empty() {
        let _ = fs::remove_file(RECORD_FILE);
        Ok(())
    } else {
        Err(problems)
    }
}

/// Removes what appeared below `root` since `before` (all of it, root
/// included, if it was absent), deepest first; cgroups by rmdir only,
/// retried while their last processes exit.
fn remove_new_paths(root: &Path, before: Option<&BTreeSet<PathBuf>>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = list_tree(root).unwrap_or_default();
        let mut new: Vec<&PathBuf> = now.iter().filter(|p| before.is_none_or(|b| !b.contains(*p))).collect();
        if new.is_empty() {
            return Ok(());
        }
        new.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let mut errors = Vec::new();
        for p in new {
            let is_dir = fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
            let r = if is_dir { fs::remove_dir(p) } else { fs::remove_file(p) };
            if let Err(e) = r {
                if e.kind() != io::ErrorKind::NotFound {
                    errors.push(format!("remove {}: {e}", p.display()));
                }
            }
        }
        if errors.is_empty() {
            continue; // list again: nothing may have appeared meanwhile
        }
        if Instant::now() > deadline {
            return Err(errors.join("; "));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `rm -rf` that stays on one file system and never follows a symlink.
fn remove_tree(dir: &Path) -> Result<(), String> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

// ------------------------------------------------------------- netfilter

fn netfilter_save(tool: &str) -> Result<String, String> {
    let o = Command::new(save_cmd(tool))
        .output()
        .map_err(|e| format!("{}: {e}", save_cmd(tool)))?;
    if !o.status.success() {
        return Err(format!(
            "{}: {}",
            save_cmd(tool),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The tables of a save, with their built-in chains' lines.
fn tables(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur = None;
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            out.entry(t.to_string()).or_default();
            cur = Some(t.to_string());
        } else if let (Some(t), Some(chain)) = (&cur, l.strip_prefix(':')) {
            let mut f = chain.split_whitespace();
            if let (Some(name), Some(policy)) = (f.next(), f.next()) {
                if policy != "-" {
                    out.get_mut(t).unwrap().push(name.to_string());
                }
            }
        }
    }
    out
}

/// A save without its comment lines and with its counters zeroed: what
/// must be the same before and after.
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let l = match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) if l.ends_with(']') => format!("{} [0:0]", &l[..i]),
            _ => l.to_string(),
        };
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Puts one family back: the tables that existed as they were (restore
/// replaces a table whole: its rules, its own chains, its policies), the
/// tables dockerd created flushed and, with the nf_tables backend, deleted.
fn netfilter_restore(tool: &str, restore: &str, nft_family: &str, before: &str) -> Result<(), String> {
    let now = netfilter_save(tool)?;
    if normalize(&now) == normalize(before) {
        return Ok(());
    }
    let had = tables(before);
    if !had.is_empty() {
        pipe_into(restore, &[], before)?;
    }
    let nf_tables = Command::new(tool)
        .arg("-V")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"));
    for (t, builtins) in tables(&now) {
        if had.contains_key(&t) {
            continue;
        }
        let mut flush = format!("*{t}\n");
        for c in builtins {
            flush.push_str(&format!(":{c} ACCEPT [0:0]\n"));
        }
        flush.push_str("COMMIT\n");
        pipe_into(restore, &[], &flush)?;
        if nf_tables {
            let o = Command::new("nft")
                .args(["delete", "table", nft_family, &t])
                .output()
                .map_err(|e| format!("nft delete table {nft_family} {t}: {e} (install nftables)"))?;
            if !o.status.success() {
                return Err(format!(
                    "nft delete table {nft_family} {t}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
    }
    let after = netfilter_save(tool)?;
    if normalize(&after) != normalize(before) {
        return Err(format!(
            "{tool} not restored:\n--- before\n{}--- after\n{}",
            normalize(before),
            normalize(&after)
        ));
    }
    Ok(())
}

fn pipe_into(prog: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut c = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    c.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|e| format!("{prog}: {e}"))?;
    let o = c.wait_with_output().map_err(|e| format!("{prog}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{prog}: {}", String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(())
}

/// The first line of `iptables -S CHAIN` (or ip6tables): `-P CHAIN POLICY`.
pub fn policy(tool: &str, chain: &str) -> String {
    let o = Command::new(tool).args(["-S", chain]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

// ------------------------------------------------------------- processes

/// Running processes named `dockerd`, anyone's.
pub fn dockerd_pids() -> Vec<i32> {
    proc_pids()
        .into_iter()
        .filter(|p| read_trim(Path::new(&format!("/proc/{p}/comm"))).is_some_and(|c| c == "dockerd"))
        .collect()
}

/// Every live process (zombies, which only wait to be reaped, left out).
fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|p| stat_field(*p, 0).is_some_and(|s| s != "Z"))
                .collect()
        })
        .unwrap_or_default()
}

/// Field `n` after the command name of /proc/PID/stat (0 = state, 1 = ppid).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    Some(s[s.rfind(')')? + 1..].split_whitespace().nth(n)?.to_string())
}

/// Processes whose command line names `dir` (dockerd, its containerd, the
/// shims), never this one.
pub fn processes_of(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    proc_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

fn ppid(pid: i32) -> Option<i32> {
    stat_field(pid, 1)?.parse().ok()
}

/// SIGKILLs the processes naming `dir` and all their descendants (a
/// container's first process takes its whole pid namespace with it), and
/// waits up to 5 s for them to go.
fn kill_tree_mentioning(dir: &Path) {
    let roots = processes_of(dir);
    if roots.is_empty() {
        return;
    }
    let parents: Vec<(i32, i32)> = proc_pids().into_iter().filter_map(|p| Some((p, ppid(p)?))).collect();
    let mut all: BTreeSet<i32> = roots.into_iter().collect();
    loop {
        let more: Vec<i32> = parents
            .iter()
            .filter(|(p, pp)| all.contains(pp) && !all.contains(p))
            .map(|(p, _)| *p)
            .collect();
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    all.remove(&(std::process::id() as i32));
    eprintln!("docker harness: killing what is left of {}: {all:?}", dir.display());
    for &p in &all {
        // SAFETY: kill(2); these pids were just seen under `dir`'s processes.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let t0 = Instant::now();
    while all.iter().any(|p| stat_field(*p, 0).is_some_and(|s| s != "Z")) && t0.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- mounts

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unmount_below(dir: &Path) {
    for _ in 0..5 {
        let mounts = mounts_below(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2 with a valid C string.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

// ----------------------------------------------------------------- links

fn links() -> BTreeSet<String> {
    dir_names(Path::new("/sys/class/net")).into_iter().collect()
}

fn link_master(name: &str) -> Option<String> {
    let t = fs::read_link(format!("/sys/class/net/{name}/master")).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

/// dockerd's own naming: `docker0`, `br-<12 hex>`, `veth<7 hex>`.
fn docker_like(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    name == "docker0"
        || name.strip_prefix("br-").is_some_and(|s| hex(s, 12))
        || name.strip_prefix("veth").is_some_and(|s| hex(s, 7))
}

/// Links that are not in `before` and are dockerd's: named like its own,
/// or enslaved to one of its bridges.
fn docker_links(before: &BTreeSet<String>) -> Vec<String> {
    let now = links();
    let bridges: BTreeSet<&String> = now
        .iter()
        .filter(|l| !before.contains(*l) && (*l == "docker0" || l.starts_with("br-")))
        .collect();
    now.iter()
        .filter(|l| !before.contains(*l))
        .filter(|l| docker_like(l) || link_master(l).is_some_and(|m| bridges.iter().any(|b| **b == m)))
        .cloned()
        .collect()
}

/// The device the host routes `ip` through (`ip route get`, no packet sent).
pub fn route_dev(ip: Ipv4Addr) -> String {
    let o = Command::new("ip")
        .args(["-o", "route", "get", &ip.to_string()])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    let mut f = s.split_whitespace();
    while let Some(w) = f.next() {
        if w == "dev" {
            return f.next().unwrap_or("").to_string();
        }
    }
    String::new()
}

/// A plain HTTP/1.0 GET from the host to a container; the whole response.
/// Panics unless the host routes `ip` through a Docker bridge (the tests
/// never send anything towards the uplink).
pub fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> io::Result<String> {
    let dev = route_dev(ip);
    assert!(
        dev == "docker0" || dev.starts_with("br-"),
        "{ip} is routed through {dev:?}, not a Docker bridge: refusing to send"
    );
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

// --------------------------------------------------------------- snapshot

/// What a Docker test must leave as it found it, for a test to compare
/// before and after (take both while holding [`HostLock`]).
#[derive(Debug, Clone)]
pub struct HostSnapshot {
    /// Normalized `iptables-save` / `ip6tables-save` (see [`normalize`]).
    pub netfilter: BTreeMap<String, String>,
    /// `-P INPUT|FORWARD|OUTPUT ...` of both families.
    pub policies: Vec<String>,
    /// Every value under net/ipv4/conf, net/ipv6/conf, net/bridge, and
    /// `ip_forward`.
    pub sysctls: BTreeMap<PathBuf, String>,
    pub links: BTreeSet<String>,
    pub dockerd: Vec<i32>,
    pub paths: BTreeMap<PathBuf, Option<BTreeSet<PathBuf>>>,
}

impl HostSnapshot {
    pub fn take() -> HostSnapshot {
        let mut netfilter = BTreeMap::new();
        let mut policies = Vec::new();
        for (tool, _, _) in FAMILIES {
            netfilter.insert(
                tool.to_string(),
                normalize(&netfilter_save(tool).unwrap_or_else(|e| panic!("{e}"))),
            );
            for chain in ["INPUT", "FORWARD", "OUTPUT"] {
                policies.push(format!("{tool} {}", policy(tool, chain)));
            }
        }
        let mut sysctls = BTreeMap::new();
        let mut todo = vec![
            PathBuf::from("/proc/sys/net/ipv4/conf"),
            PathBuf::from("/proc/sys/net/ipv6/conf"),
            PathBuf::from("/proc/sys/net/bridge"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
        ];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                if let Ok(rd) = fs::read_dir(&p) {
                    todo.extend(rd.flatten().map(|e| e.path()));
                }
            } else if let Some(v) = read_trim(&p) {
                sysctls.insert(p, v);
            }
        }
        HostSnapshot {
            netfilter,
            policies,
            sysctls,
            links: links(),
            dockerd: dockerd_pids(),
            paths: watched_roots()
                .into_iter()
                .map(|r| (r.clone(), list_tree(&r)))
                .collect(),
        }
    }

    /// How `after` differs from this snapshot in what Docker touches.
    /// Interfaces that came or went meanwhile and are not Docker's are
    /// someone else's business (other tests' labs), and so are their
    /// sysctls.
    pub fn diff(&self, after: &HostSnapshot) -> Vec<String> {
        let mut d = Vec::new();
        for (tool, before) in &self.netfilter {
            if after.netfilter.get(tool) != Some(before) {
                d.push(format!(
                    "{tool}-save differs:\n--- before\n{before}--- after\n{}",
                    after.netfilter.get(tool).map_or("", |s| s.as_str())
                ));
            }
        }
        if self.policies != after.policies {
            d.push(format!("policies: {:?} -> {:?}", self.policies, after.policies));
        }
        for (p, v) in &self.sysctls {
            if let Some(a) = after.sysctls.get(p) {
                if a != v {
                    d.push(format!("{} = {v} -> {a}", p.display()));
                }
            }
        }
        for l in after.links.difference(&self.links) {
            if docker_like(l) {
                d.push(format!("new link {l}"));
            }
        }
        if !after.dockerd.is_empty() && after.dockerd != self.dockerd {
            d.push(format!("dockerd running: {:?}", after.dockerd));
        }
        if self.paths != after.paths {
            for (root, b) in &self.paths {
                let a = after.paths.get(root).cloned().flatten();
                if *b != a {
                    d.push(format!("{}: {b:?} -> {a:?}", root.display()));
                }
            }
        }
        d
    }

    pub fn assert_same(&self, after: &HostSnapshot) {
        let d = self.diff(after);
        assert!(d.is_empty(), "the host changed:\n  {}", d.join("\n  "));
    }
}

// ------------------------------------------------------------------ misc

fn docker_cli() -> String {
    // Debian's client, matching its dockerd (another `docker` may come
    // first in PATH).
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker".to_string()
    } else {
        "docker".to_string()
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// True if the ELF64 file at `p` has no program interpreter (is static).
fn is_static_elf(p: &Path) -> io::Result<bool> {
    let b = fs::read(p)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a 64-bit little-endian ELF file");
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let ty = b.get(o..o + 4).ok_or_else(bad)?;
        if u32::from_le_bytes(ty.try_into().unwrap()) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// `cmd.output()` that kills the command after `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("killed after {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    })
}
