//! Tier 3: L7 visibility end to end. Real servers started by the test inside
//! a lab namespace (an HTTP/1.1 server, an HTTP/1.0 server that closes after
//! each response, redis-server, mariadbd), real clients in the other one
//! (curl, redis-cli, the mariadb client, and raw sockets for pipelining),
//! also through a forward to a virtual service address, and the records
//! read back from the audit log (`sluice l7`), the event stream and
//! `/metrics`. Needs root.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{require_root, Daemon, LabGuard};
use serde_json::Value;
use sluice::lab::LabHost;

/// Reads one request's head (request line and headers); its path, or
/// None once the client closed.
fn read_request_head(r: &mut impl BufRead) -> Option<String> {
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return None;
    }
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    Some(first.split_whitespace().nth(1).unwrap_or("/").to_string())
}

/// A keep-alive HTTP/1.1 server: every request gets `200` (or `404` for
/// paths starting with /missing) with a small body naming the path.
fn http_server(host: &LabHost, addr: SocketAddr) {
    let l = host.in_netns(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while let Some(path) = read_request_head(&mut r) {
                    let (code, text) = if path.starts_with("/missing") {
                        (404, "Not Found")
                    } else {
                        (200, "OK")
                    };
                    let body = format!("you asked for {path}\n");
                    let resp = format!(
                        "HTTP/1.1 {code} {text}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A server process in a namespace, killed on drop; its data directory (if
/// any) is removed after it.
struct Server(Child, #[allow(dead_code)] Option<tempfile::TempDir>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nsenter(host: &LabHost, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", host.netns_path())).args(args);
    c
}

fn wait_port(host: &LabHost, to: SocketAddr, what: &str, deadline: Duration) {
    let t0 = Instant::now();
    while !host
        .in_netns(move || TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())
        .unwrap()
    {
        assert!(t0.elapsed() < deadline, "{what} did not start listening on {to}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn redis_server(host: &LabHost, addr: SocketAddr) -> Server {
    let child = nsenter(
        host,
        &[
            "redis-server",
            "--port",
            &addr.port().to_string(),
            "--bind",
            &addr.ip().to_string(),
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .expect("redis-server (apt-get install redis-server)");
    let s = Server(child, None);
    wait_port(host, addr, "redis-server", Duration::from_secs(10));
    s
}

fn mariadb_server(host: &LabHost, addr: SocketAddr) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ])
        .arg(format!("--datadir={}", data.display()))
        .output()
        .expect("mariadb-install-db (apt-get install mariadb-server)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let child = nsenter(
        host,
        &["mariadbd", "--no-defaults", "--user=root", "--skip-grant-tables"],
    )
    .arg(format!("--datadir={}", data.display()))
    .arg(format!("--socket={}", dir.path().join("sock").display()))
    .arg(format!("--pid-file={}", dir.path().join("pid").display()))
    .arg(format!("--bind-address={}", addr.ip()))
    .arg(format!("--port={}", addr.port()))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("mariadbd");
    let s = Server(child, Some(dir));
    wait_port(host, addr, "mariadbd", Duration::from_secs(30));
    s
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Audit records of a protocol, waiting (up to 10 s) until `done` holds.
fn records_until(d: &Daemon, proto: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let v = d.json(&["l7", "--proto", proto]);
        let v = v.as_array().unwrap().clone();
        if done(&v) || t0.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Audit records of a protocol, waiting until `n` are there.
fn records(d: &Daemon, proto: &str, n: usize) -> Vec<Value> {
    records_until(d, proto, |v| v.len() >= n)
}

fn plausible(r: &Value) {
    let ms = r["latency_ms"].as_f64().unwrap_or_else(|| panic!("no latency: {r}"));
    assert!(ms > 0.0 && ms < 2000.0, "latency {ms} ms: {r}");
}

fn lab() -> LabGuard {
    LabGuard::new("sl7", 51)
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn http_requests_are_paired_with_status_and_latency_including_keep_alive_and_pipelining() {
    require_root();
    let lab = lab();
    let d = Daemon::start("l7h", &["sl7-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    http_server(b, SocketAddr::new(b.ns_v4.into(), 80));
    let base = format!("http://{}", b.ns_v4);
    // One curl, three requests on one kept-alive connection.
    run_ok(nsenter(
        a,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            &format!("{base}/one"),
            &format!("{base}/two?x=1"),
            &format!("{base}/missing"),
        ],
    ));
    let recs = records(&d, "http", 3);
    let got: Vec<(String, String)> = recs
        .iter()
        .map(|r| {
            (
                r["request"]["path"].as_str().unwrap_or("?").to_string(),
                r["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/one".to_string(), "200".to_string()),
            ("/two?x=1".to_string(), "200".to_string()),
            ("/missing".to_string(), "404".to_string())
        ],
        "{recs:#?}"
    );
    for r in &recs {
        assert_eq!(r["request"]["method"], "GET");
        assert_eq!(r["request"]["host"], b.ns_v4.to_string());
        assert_eq!(r["server"], b.ns_v4.to_string());
        assert_eq!(r["client"], a.ns_v4.to_string());
        assert_eq!(r["server_port"], 80);
        assert_eq!(r["partial"], false, "{r}");
        assert!(r["resp_bytes"].as_u64().unwrap() > 40, "{r}");
        plausible(r);
    }

    // Pipelining: three requests in one write, answers read afterwards.
    let to = SocketAddr::new(b.ns_v4.into(), 80);
    a.in_netns(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        let reqs: String = ["/p1", "/p2", "/p3"]
            .iter()
            .map(|p| format!("GET {p} HTTP/1.1\r\nHost: pipe\r\n\r\n"))
            .collect();
        s.write_all(reqs.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(3).filter(|w| w == b"/p3").count() == 0 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    })
    .unwrap();
    let recs = records(&d, "http", 6);
    let paths: Vec<&str> = recs[3..]
        .iter()
        .map(|r| r["request"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["/p1", "/p2", "/p3"], "{recs:#?}");
    assert!(recs[3..]
        .iter()
        .all(|r| r["status"] == "200" && r["request"]["host"] == "pipe"));

    // The same records are in the event stream and the metrics.
    let out = d.ok(&["events", "--kind", "l7", "--json"]);
    assert!(out.lines().count() >= 6, "{out}");
    let st = d.json(&["status"]);
    assert!(st["events"]["received"]["l7"].as_u64().unwrap() >= 6, "{st}");
    let since = d.json(&["l7", "--since", "1m", "--proto", "http"]);
    assert_eq!(since.as_array().unwrap().len(), 6);

    // Detection: HTTP on a port no list names is recognised by its first
    // bytes, and the connection is followed from then on.
    http_server(b, SocketAddr::new(b.ns_v4.into(), 8888));
    run_ok(nsenter(
        a,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            &format!("http://{}:8888/detected", b.ns_v4),
            &format!("http://{}:8888/again", b.ns_v4),
        ],
    ));
    let recs = records_until(&d, "http", |v| {
        v.iter().filter(|r| r["server_port"] == 8888).count() >= 2
    });
    let on_8888: Vec<&str> = recs
        .iter()
        .filter(|r| r["server_port"] == 8888)
        .map(|r| r["request"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(on_8888, vec!["/detected", "/again"], "{recs:#?}");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn redis_commands_keys_replies_errors_and_pipelines() {
    require_root();
    let lab = LabGuard::new("sl8", 52);
    let d = Daemon::start("l7r", &["sl8-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let addr = SocketAddr::new(b.ns_v4.into(), 6379);
    let _srv = redis_server(b, addr);
    let host = b.ns_v4.to_string();
    for cmd in [
        &["SET", "user:1", "alice"][..],
        &["GET", "user:1"],
        &["GET", "nobody"],
        &["INCR", "user:1"], // not an integer: an error reply
    ] {
        let mut args = vec!["redis-cli", "-h", &host];
        args.extend_from_slice(cmd);
        run_ok(nsenter(a, &args));
    }
    // A pipeline of 10 commands in one write.
    a.in_netns(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        let mut p = String::new();
        for i in 0..10 {
            p.push_str(&format!(
                "*2\r\n$4\r\nINCR\r\n${}\r\nctr:{i}\r\n",
                format!("ctr:{i}").len()
            ));
        }
        s.write_all(p.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut r = BufReader::new(s);
        for _ in 0..10 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, ":1\r\n");
        }
    })
    .unwrap();
    // redis-cli sends COMMAND DOCS at start on some versions: keep only ours.
    let ours = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .filter(|r| r["request"]["command"] != "COMMAND")
            .cloned()
            .collect()
    };
    let recs = ours(&records_until(&d, "redis", |v| ours(v).len() >= 14));
    let got: Vec<(String, String, String)> = recs
        .iter()
        .map(|r| {
            (
                r["request"]["command"].as_str().unwrap_or("?").to_string(),
                r["request"]["key"].as_str().unwrap_or("-").to_string(),
                r["response"]["kind"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(got[0], ("SET".into(), "user:1".into(), "simple".into()), "{recs:#?}");
    assert_eq!(got[1], ("GET".into(), "user:1".into(), "bulk".into()));
    assert_eq!(got[2].0, "GET");
    assert_eq!(got[3], ("INCR".into(), "user:1".into(), "error".into()));
    assert!(
        recs[3]["response"]["error"]
            .as_str()
            .unwrap()
            .contains("not an integer"),
        "{}",
        recs[3]
    );
    assert_eq!(recs[3]["status"], "error");
    let pipe: Vec<&str> = recs[4..14]
        .iter()
        .map(|r| r["request"]["key"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("ctr:{i}")).collect();
    assert_eq!(pipe, want, "a pipeline pairs in order");
    assert!(recs[4..14].iter().all(|r| r["response"]["kind"] == "integer"));
    for r in &recs {
        assert_eq!(r["partial"], false, "{r}");
        plausible(r);
    }
    let metrics = common::raw_get(&d.socket, "/metrics");
    assert!(
        metrics.contains("sluice_l7_requests_total{proto=\"redis\",status=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_l7_latency_seconds_bucket"), "{metrics}");

    // Detection on a port no list names: a RESP array starts the capture.
    let other = SocketAddr::new(b.ns_v4.into(), 7777);
    let _srv2 = redis_server(b, other);
    run_ok(nsenter(
        a,
        &["redis-cli", "-h", &host, "-p", "7777", "SET", "seen", "1"],
    ));
    let recs = records_until(&d, "redis", |v| v.iter().any(|r| r["server_port"] == 7777));
    let r = recs
        .iter()
        .find(|r| r["server_port"] == 7777 && r["request"]["command"] == "SET")
        .unwrap_or_else(|| panic!("no detected redis record: {recs:#?}"));
    assert_eq!(r["request"]["key"], "seen");
    assert_eq!(r["response"]["kind"], "simple");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn mysql_queries_errors_and_schema_changes_with_a_real_mariadb() {
    require_root();
    let lab = LabGuard::new("sl9", 53);
    let d = Daemon::start("l7m", &["sl9-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let addr = SocketAddr::new(b.ns_v4.into(), 3306);
    let _srv = mariadb_server(b, addr);
    let host = b.ns_v4.to_string();
    let sql = "CREATE DATABASE shop; USE shop; CREATE TABLE items (id INT, name TEXT); \
               INSERT INTO items VALUES (1, 'pen'), (2, 'ink'); SELECT * FROM items; SELECT * FROM nowhere;";
    let out = nsenter(
        a,
        &[
            "mariadb",
            "--no-defaults",
            "--skip-ssl",
            "-h",
            &host,
            "-u",
            "root",
            "-e",
            sql,
        ],
    )
    .output()
    .unwrap();
    // The last statement fails (1146), so the client exits non-zero.
    assert!(String::from_utf8_lossy(&out.stderr).contains("1146"), "{out:?}");
    let has = |v: &[Value], needle: &str| {
        v.iter()
            .any(|r| r["request"]["query"].as_str().is_some_and(|q| q.contains(needle)))
    };
    let recs = records_until(&d, "mysql", |v| {
        has(v, "nowhere") && has(v, "SELECT * FROM items") && v.iter().any(|r| r["request"]["command"] == "COM_INIT_DB")
    });
    let find = |needle: &str| {
        recs.iter()
            .find(|r| r["request"]["query"].as_str().is_some_and(|q| q.contains(needle)))
            .unwrap_or_else(|| panic!("no record with {needle}: {recs:#?}"))
    };
    let sel = find("SELECT * FROM items");
    assert_eq!(sel["request"]["command"], "COM_QUERY");
    assert_eq!(sel["response"]["kind"], "result_set", "{sel}");
    assert_eq!(sel["response"]["rows"], 2, "{sel}");
    plausible(sel);
    let ins = find("INSERT INTO items");
    assert_eq!(ins["response"]["kind"], "ok");
    assert_eq!(ins["response"]["affected_rows"], 2, "{ins}");
    let err = find("nowhere");
    assert_eq!(err["response"]["kind"], "err");
    assert_eq!(err["error_code"], 1146, "{err}");
    assert_eq!(err["status"], "err");
    // `USE shop` in the client is COM_INIT_DB.
    assert!(
        recs.iter()
            .any(|r| r["request"]["command"] == "COM_INIT_DB" && r["request"]["schema"] == "shop"),
        "{recs:#?}"
    );

    // Detection on a port no list names: the server greeting starts it.
    let other = SocketAddr::new(b.ns_v4.into(), 13306);
    let _srv2 = mariadb_server(b, other);
    let out = nsenter(
        a,
        &[
            "mariadb",
            "--no-defaults",
            "--skip-ssl",
            "-h",
            &host,
            "-P",
            "13306",
            "-u",
            "root",
            "-e",
            "SELECT 42 AS detected",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let recs = records_until(&d, "mysql", |v| has(v, "SELECT 42"));
    let r = recs
        .iter()
        .find(|r| r["request"]["query"].as_str().is_some_and(|q| q.contains("SELECT 42")))
        .unwrap_or_else(|| panic!("no detected mysql record: {recs:#?}"));
    assert_eq!(r["server_port"], 13306);
    assert_eq!(r["response"]["kind"], "result_set", "{r}");
    assert_eq!(r["response"]["rows"], 1, "{r}");
}

/// An HTTP/1.0 server that answers without a length and closes: the close
/// delimits every response. Paths starting with /slow are answered after
/// `slow`.
fn http10_close_server(host: &LabHost, addr: SocketAddr, slow: Duration) {
    let l = host.in_netns(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let Some(path) = read_request_head(&mut r) else { return };
                if path.starts_with("/slow") {
                    std::thread::sleep(slow);
                }
                let resp = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nyou asked for {path}\n");
                let _ = w.write_all(resp.as_bytes());
                // Dropping both halves closes the connection (FIN): the
                // request was read whole, so nothing unread turns it into
                // a RST.
            });
        }
    });
}

/// One request on its own connection from `host`; the response as read
/// until the server closed.
fn get_until_close(host: &LabHost, to: SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.0\r\nHost: close\r\n\r\n");
    host.in_netns(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

fn path_of(r: &Value) -> &str {
    r["request"]["path"].as_str().unwrap_or("?")
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_close_delimited_response_is_recorded_at_the_fin_and_listed_in_request_order() {
    require_root();
    let lab = LabGuard::new("sl10", 102);
    let d = Daemon::start("l7c", &["sl10-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let to = SocketAddr::new(b.ns_v4.into(), 80);
    let slow = Duration::from_millis(700);
    http10_close_server(b, to, slow);
    wait_port(a, to, "the HTTP/1.0 server", Duration::from_secs(5));
    // The probe connection of wait_port sent nothing: no record.

    // /slow first; while it waits, /fast is asked and answered. /slow's
    // record is finished last but its request came first.
    let t0 = Instant::now();
    let slow_client = {
        let a = a.clone();
        std::thread::spawn(move || get_until_close(&a, to, "/slow"))
    };
    std::thread::sleep(Duration::from_millis(200));
    let fast = get_until_close(a, to, "/fast");
    assert!(fast.starts_with("HTTP/1.0 200") && fast.ends_with("/fast\n"), "{fast}");
    let slow_resp = slow_client.join().unwrap();
    assert!(slow_resp.ends_with("/slow\n"), "{slow_resp}");
    let answered = Instant::now();
    assert!(answered - t0 >= slow);

    // Both records within about a second of the close (the pipeline drains
    // every 100 ms; the idle flush would take 30 s).
    let recs = records_until(&d, "http", |v| v.len() >= 2);
    let took = answered.elapsed();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert!(took < Duration::from_millis(1500), "records after {took:?}");
    let paths: Vec<&str> = recs.iter().map(path_of).collect();
    assert_eq!(paths, vec!["/slow", "/fast"], "request order: {recs:#?}");
    for r in &recs {
        assert_eq!(r["status"], "200", "{r}");
        assert_eq!(r["partial"], false, "{r}");
        assert_eq!(r["server"], b.ns_v4.to_string());
        assert!(r.get("target").is_none(), "not forwarded: {r}");
        assert!(r["resp_bytes"].as_u64().unwrap() > 40, "{r}");
        plausible(r);
    }
    let slow_ms = recs[0]["latency_ms"].as_f64().unwrap();
    assert!(slow_ms >= slow.as_millis() as f64, "{slow_ms} ms");
    assert!(recs[0]["ts_ns"].as_u64().unwrap() < recs[1]["ts_ns"].as_u64().unwrap());

    // A later request lists after both.
    get_until_close(a, to, "/later");
    let recs = records(&d, "http", 3);
    let paths: Vec<&str> = recs.iter().map(path_of).collect();
    assert_eq!(paths, vec!["/slow", "/fast", "/later"], "{recs:#?}");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_forwarded_exchange_is_one_record_naming_the_service_and_the_target() {
    require_root();
    let lab = LabGuard::new("sl11", 103);
    let d = Daemon::start("l7f", &["sl11-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    // The target listens on 8081, which no L7 list names; the service's
    // port 80 is.
    let cases = [
        (
            SocketAddr::new("198.18.250.71".parse().unwrap(), 80),
            SocketAddr::new(b.ns_v4.into(), 8081),
        ),
        (
            SocketAddr::new("2001:2:0:250::71".parse().unwrap(), 80),
            SocketAddr::new(b.ns_v6.into(), 8081),
        ),
    ];
    for (service, target) in cases {
        http_server(b, target);
        d.ok(&["forward", "add", &service.to_string(), &target.to_string()]);
    }
    let mut want = 0;
    for (service, target) in cases {
        let url = |p: &str| format!("http://{}{p}", service);
        let client = if service.is_ipv4() {
            a.ns_v4.to_string()
        } else {
            a.ns_v6.to_string()
        };
        // Two requests on one kept-alive connection, then one more on
        // another.
        run_ok(nsenter(
            a,
            &["curl", "-sS", "-o", "/dev/null", &url("/one"), &url("/two")],
        ));
        run_ok(nsenter(a, &["curl", "-sS", "-o", "/dev/null", &url("/missing")]));
        want += 3;
        let recs = records(&d, "http", want);
        // Half records come at once (a response without its request) or at
        // the close (a request without response): give them the time.
        std::thread::sleep(Duration::from_millis(500));
        let recs_later = d.json(&["l7", "--proto", "http"]);
        assert_eq!(recs_later.as_array().unwrap(), &recs, "nothing more comes");
        let ours = &recs[want - 3..];
        let got: Vec<(&str, &str)> = ours
            .iter()
            .map(|r| (path_of(r), r["status"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            got,
            vec![("/one", "200"), ("/two", "200"), ("/missing", "404")],
            "one record per exchange, request and response paired: {recs:#?}"
        );
        for r in ours {
            assert_eq!(r["partial"], false, "{r}");
            assert_eq!(r["client"], client, "{r}");
            assert_eq!(r["server"], service.ip().to_string(), "the address dialled: {r}");
            assert_eq!(r["server_port"], 80);
            assert_eq!(r["target"], target.ip().to_string(), "and who answered: {r}");
            assert_eq!(r["target_port"], 8081);
            plausible(r);
        }
        // The text listing names both.
        let text = d.ok(&["l7", "--proto", "http"]);
        assert!(text.contains(&format!("-> {service} (target {target})")), "{text}");
    }
}
