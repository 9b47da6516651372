//! Tier 3 (Docker): the real Docker tier's harness (`common::docker`) proves
//! itself. A private dockerd from Debian's docker.io runs containers of a
//! locally built busybox image: they reach each other and the host reaches
//! them, with Docker's own firewall in force. And the host is left exactly
//! as it was found (firewall, policies, sysctls, links, cgroups, run-time
//! files, no dockerd): after a normal end, after a test that panics with
//! containers up, after a start that fails half-way, and after the test
//! process is killed outright (dockerd stops by itself and the next start
//! cleans up the rest); and it refuses to run beside another dockerd or
//! `docker0`, changing nothing. Needs root. The tests take turns
//! (`serial`): each starts its own dockerd, and the killed-process test
//! must not have a sibling clean up before it has looked.

mod common;

use std::{
    io::{BufRead, BufReader},
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use common::{
    docker::{self, Docker, HostLock, HostSnapshot, Options, INDEX},
    require_root,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

static SERIAL: Mutex<()> = Mutex::new(());

/// One test of this file at a time (a failed one does not poison the rest).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

fn eventually(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn has_docker_chains() -> bool {
    ["iptables-save", "ip6tables-save"].iter().any(|t| {
        let o = Command::new(t).output().unwrap();
        String::from_utf8_lossy(&o.stdout).contains("DOCKER")
    })
}

/// The checks every test ends with, on top of the snapshot comparison.
fn assert_no_docker_left(before: &HostSnapshot, forwarding_was: &str) {
    before.assert_same(&HostSnapshot::take());
    assert!(!Path::new("/sys/class/net/docker0").exists(), "docker0 left");
    assert_eq!(docker::dockerd_pids(), Vec::<i32>::new(), "dockerd left running");
    assert_eq!(read(IP_FORWARD), forwarding_was, "ip_forward not restored");
    if !before.netfilter.values().any(|t| t.contains("DOCKER")) {
        assert!(!has_docker_chains(), "DOCKER chains left");
    }
    assert_eq!(docker::dead_run_dir(), None, "the cleanup record is still there");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn containers_reach_each_other_and_the_host_is_left_as_found() {
    require_root();
    let _serial = serial();
    let _host = HostLock::acquire();
    let before = HostSnapshot::take();
    let forwarding_was = read(IP_FORWARD);
    {
        let t0 = Instant::now();
        let d = Docker::start();
        eprintln!("Docker::start took {:.2?}", t0.elapsed());

        // Docker's own rules are in force. dockerd sets the FORWARD policy
        // to DROP when it turns forwarding on itself, not when it was on.
        assert!(
            Command::new("iptables")
                .args(["-S", "DOCKER-USER"])
                .output()
                .unwrap()
                .status
                .success(),
            "no DOCKER-USER chain while dockerd runs"
        );
        if forwarding_was == "0" {
            assert_eq!(docker::policy("iptables", "FORWARD"), "-P FORWARD DROP");
        }
        assert_eq!(read(IP_FORWARD), "1");

        d.run_container("web", &["httpd", "-f", "-p", "80", "-h", "/www"]);
        let id = d.run_container("client", &["sleep", "3600"]);
        assert_eq!(id.len(), 64, "{id}");
        let web = d.ip("web");
        assert_eq!(docker::route_dev(web), "docker0", "{web} must be on docker0");

        // Container to container, over docker0.
        let url = format!("http://{web}/");
        eventually("httpd answers wget", Duration::from_secs(10), || {
            d.try_exec("client", &["wget", "-qO-", &url]).status.success()
        });
        assert_eq!(d.exec("client", &["wget", "-qO-", &url]), INDEX);

        // The host to a container.
        let resp = docker::http_get(web, 80, "/").unwrap();
        assert!(resp.starts_with("HTTP/1.") && resp.ends_with(INDEX), "{resp}");

        // The other helpers.
        assert!(d.pid("web") > 1);
        d.restart("web");
        assert_eq!(d.inspect("web")["State"]["Running"], true);
        let web = d.ip("web");
        eventually("httpd answers after a restart", Duration::from_secs(10), || {
            docker::http_get(web, 80, "/").is_ok_and(|r| r.ends_with(INDEX))
        });
        d.rm("client");
        assert!(!d.try_run(&["inspect", "client"]).status.success());
        assert!(d.socket().exists());
    }
    assert_no_docker_left(&before, &forwarding_was);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_test_that_panics_with_containers_up_leaves_the_host_as_found() {
    require_root();
    let _serial = serial();
    let _host = HostLock::acquire();
    let before = HostSnapshot::take();
    let forwarding_was = read(IP_FORWARD);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let d = Docker::start();
        d.run_container("web", &["httpd", "-f", "-p", "80", "-h", "/www"]);
        d.run_container("client", &["sleep", "3600"]);
        // A network of its own too: a br-* bridge and its isolation rules.
        d.run(&["network", "create", "sluice-test-net"]);
        d.run_container_with("other", &["--network", "sluice-test-net"], &["sleep", "3600"]);
        d.exec("client", &["true"]);
        assert!(Path::new("/sys/class/net/docker0").exists());
        panic!("deliberate: a failing test with three containers up");
    }));
    let p = r.expect_err("the closure panics");
    assert!(
        panic_text(p.as_ref()).contains("deliberate"),
        "{}",
        panic_text(p.as_ref())
    );
    assert_no_docker_left(&before, &forwarding_was);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_start_that_fails_half_way_leaves_the_host_as_found() {
    require_root();
    let _serial = serial();
    let _host = HostLock::acquire();
    let before = HostSnapshot::take();
    let forwarding_was = read(IP_FORWARD);

    // dockerd is up and has rewritten the firewall; then the image fails.
    let r = catch_unwind(|| {
        Docker::start_with(Options {
            busybox: Some(PathBuf::from("/nonexistent/busybox")),
            ..Options::default()
        })
    });
    let msg = panic_text(r.err().expect("start must fail").as_ref());
    assert!(msg.contains("install busybox-static"), "{msg}");
    assert_no_docker_left(&before, &forwarding_was);

    // dockerd itself refuses to start: its log is in the message.
    let r = catch_unwind(|| {
        Docker::start_with(Options {
            dockerd_args: vec!["--bip".into(), "not-an-address".into()],
            ..Options::default()
        })
    });
    let msg = panic_text(r.err().expect("start must fail").as_ref());
    assert!(
        msg.contains("dockerd exited") && msg.contains("not-an-address"),
        "{msg}"
    );
    assert_no_docker_left(&before, &forwarding_was);
}

/// Deletes a link on drop.
struct LinkGuard(&'static str);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn it_refuses_to_run_beside_another_docker_and_changes_nothing() {
    require_root();
    let _serial = serial();
    let _host = HostLock::acquire();
    let before = HostSnapshot::take();
    let forwarding_was = read(IP_FORWARD);

    // A process named dockerd (a copy of sleep).
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("dockerd");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let fake = Killed(Command::new(&fake).arg("60").spawn().unwrap());
    eventually("the fake dockerd is seen", Duration::from_secs(5), || {
        docker::dockerd_pids().contains(&(fake.0.id() as i32))
    });
    let msg = panic_text(catch_unwind(Docker::start).err().expect("start must refuse").as_ref());
    assert!(msg.contains("a dockerd is already running"), "{msg}");
    drop(fake);
    before.assert_same(&HostSnapshot::take());

    // A docker0 that is not ours.
    assert!(Command::new("ip")
        .args(["link", "add", "docker0", "type", "bridge"])
        .status()
        .unwrap()
        .success());
    let link = LinkGuard("docker0");
    let msg = panic_text(catch_unwind(Docker::start).err().expect("start must refuse").as_ref());
    assert!(msg.contains("docker0 already exists"), "{msg}");
    assert!(
        Path::new("/sys/class/net/docker0").exists(),
        "someone else's docker0 was removed"
    );
    drop(link);
    assert_no_docker_left(&before, &forwarding_was);
}

const HELPER_ENV: &str = "SLUICE_DOCKER_KILL_HELPER";
const HELPER: &str = "helper_for_the_killed_process_test";

/// Not a test of its own: the process that
/// `a_killed_test_process_leaves_no_dockerd_and_the_next_start_cleans_up`
/// starts and kills. Without its variable it returns at once.
#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn helper_for_the_killed_process_test() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let d = Docker::start();
    d.run_container_with("victim", &["--stop-timeout", "1"], &["sleep", "3600"]);
    println!("READY {}", d.dir().display());
    // Killed long before; should the killer die first, clean up after a while.
    std::thread::sleep(Duration::from_secs(120));
}

/// Kills its child process on drop, whatever happened.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_killed_test_process_leaves_no_dockerd_and_the_next_start_cleans_up() {
    require_root();
    let _serial = serial();
    let (before, forwarding_was) = {
        let _host = HostLock::acquire();
        (HostSnapshot::take(), read(IP_FORWARD))
    };
    // The helper takes the host lock in its own process, so this one must
    // not hold it now.
    let mut child = Killed(
        Command::new(std::env::current_exe().unwrap())
            .args([
                HELPER,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let dir = loop {
        let l = lines
            .next()
            .expect("the helper ended before its Docker was up")
            .unwrap();
        // (libtest prints "test NAME ... " on the same line first.)
        if let Some((_, d)) = l.split_once("READY ") {
            break PathBuf::from(d.trim());
        }
    };
    assert!(Path::new("/sys/class/net/docker0").exists());
    assert!(!docker::processes_of(&dir).is_empty());

    // SIGKILL: no destructor runs in the helper.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // dockerd got SIGTERM when its parent died: it stops the container
    // (1 s stop timeout) and exits, and its containerd and shim go too.
    eventually(
        "the dead run's dockerd exits by itself",
        Duration::from_secs(30),
        || docker::processes_of(&dir).is_empty(),
    );
    // The rest is still there, and the record says whose it is.
    assert_eq!(docker::dead_run_dir(), Some(dir.clone()));
    assert!(Path::new("/sys/class/net/docker0").exists());
    assert!(has_docker_chains());

    // The next acquisition of the lock cleans up after the dead run.
    let _host = HostLock::acquire();
    assert!(!dir.exists(), "{} left", dir.display());
    assert_no_docker_left(&before, &forwarding_was);
}
