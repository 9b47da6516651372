//! The REST API driven through `app(state)` with no socket and no kernel
//! (in-memory tables): every route, and the bad-input contract: a 4xx with
//! `{"error": ...}` and nothing changed.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sluice::{
    api::{app, Ctl},
    firewall::tables::MemFirewallTables,
    firewall::Firewall,
    limits::tables::MemLimitTables,
    limits::Limiter,
    store::Store,
    visibility::Hub,
};
use tower::ServiceExt;

fn router(capacity: u32) -> Router {
    let (fw, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(MemFirewallTables::new(capacity))).unwrap();
    let limits = Limiter::open(Store::in_memory().unwrap(), Box::new(MemLimitTables::default())).unwrap();
    app(Arc::new(Ctl::with_doubles(fw, limits, Hub::new(100))))
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "non-JSON body for {method} {uri}: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

async fn post(app: &Router, uri: &str, v: Value) -> (StatusCode, Value) {
    call(app, "POST", uri, Some(serde_json::to_vec(&v).unwrap())).await
}

async fn count(app: &Router, list: &str) -> usize {
    let (s, v) = call(app, "GET", list, None).await;
    assert_eq!(s, StatusCode::OK);
    v.as_array().unwrap().len()
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("no error field in {v}"))
}

#[tokio::test]
async fn add_list_delete_by_id_and_by_cidr() {
    let app = router(100);
    let (s, r) = post(&app, "/v1/deny", json!({"cidr": "198.18.1.2", "comment": "lab a"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(r["cidr"], "198.18.1.2/32");
    assert_eq!(r["direction"], "src");
    assert_eq!(r["comment"], "lab a");
    let id = r["id"].as_i64().unwrap();

    let (s, r) = post(&app, "/v1/deny", json!({"cidr": "2001:2::/48", "dst": true})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(r["direction"], "dst");
    let (_, list) = call(&app, "GET", "/v1/deny", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["packets"], 0);

    let (s, r) = call(&app, "DELETE", &format!("/v1/deny/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["id"], id);
    // By CIDR: src does not match a dst rule; dst does.
    let (s, _) = call(&app, "DELETE", "/v1/deny?cidr=2001:2::/48", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&app, "DELETE", "/v1/deny?cidr=2001:2::%2F48&dst=true", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(count(&app, "/v1/deny").await, 0);
}

#[tokio::test]
async fn allow_and_deny_are_separate_lists() {
    let app = router(100);
    post(&app, "/v1/allow", json!({"cidr": "198.18.0.0/15"})).await;
    let (s, _) = post(&app, "/v1/deny", json!({"cidr": "198.18.0.0/15"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(count(&app, "/v1/allow").await, 1);
    assert_eq!(count(&app, "/v1/deny").await, 1);
    // An allow id is not a deny id.
    let (_, allow) = call(&app, "GET", "/v1/allow", None).await;
    let (s, _) = call(&app, "DELETE", &format!("/v1/deny/{}", allow[0]["id"]), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_is_a_4xx_json_error_and_changes_nothing() {
    let app = router(100);
    post(&app, "/v1/deny", json!({"cidr": "10.0.0.0/8"})).await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"cidr": "10.0.0.0/33"}),
            StatusCode::BAD_REQUEST,
            "prefix length 33",
        ),
        (json!({"cidr": "abc"}), StatusCode::BAD_REQUEST, "invalid CIDR"),
        (
            json!({"cidr": "10.1.2.3/8"}),
            StatusCode::BAD_REQUEST,
            "did you mean 10.0.0.0/8",
        ),
        (json!({"cidr": "10.0.0.0/8"}), StatusCode::CONFLICT, "already exists"),
        (json!({"cidr": 5}), StatusCode::UNPROCESSABLE_ENTITY, "cidr"),
        (
            json!({"cidr": "11.0.0.0/8", "bogus": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bogus",
        ),
        (
            json!({"cidr": "11.0.0.0/8", "comment": "a\u{7}b"}),
            StatusCode::BAD_REQUEST,
            "control",
        ),
        (json!([]), StatusCode::BAD_REQUEST, "no rules"),
        // A batch with one bad entry adds none of the good ones.
        (
            json!([{"cidr": "12.0.0.0/8"}, {"cidr": "nope"}]),
            StatusCode::BAD_REQUEST,
            "rule 2",
        ),
        (
            json!([{"cidr": "13.0.0.0/8"}, {"cidr": "13.0.0.0/8"}]),
            StatusCode::BAD_REQUEST,
            "twice",
        ),
        (
            json!([{"cidr": "14.0.0.0/8"}, {"cidr": "10.0.0.0/8"}]),
            StatusCode::CONFLICT,
            "already exists",
        ),
    ];
    for (body, want, needle) in cases {
        let (s, v) = post(&app, "/v1/deny", body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    let (s, v) = call(&app, "POST", "/v1/deny", Some(b"{not json".to_vec())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_of(&v);
    let (s, v) = call(&app, "DELETE", "/v1/deny/xyz", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_of(&v);
    let (s, v) = call(&app, "DELETE", "/v1/deny?cidr=300.0.0.0/8", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_of(&v);
    let (s, v) = call(&app, "DELETE", "/v1/deny", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(&app, "GET", "/v1/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_of(&v);
    assert_eq!(count(&app, "/v1/deny").await, 1);
}

#[tokio::test]
async fn bodies_over_one_mib_are_refused() {
    let app = router(1_000_000);
    let many: Vec<Value> = (0..40_000u32)
        .map(|i| json!({"cidr": format!("10.{}.{}.0/24", i / 256, i % 256), "comment": "x"}))
        .collect();
    let body = serde_json::to_vec(&many).unwrap();
    assert!(body.len() > 1 << 20);
    let (s, v) = call(&app, "POST", "/v1/deny", Some(body)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&v).contains("larger than"));
    assert_eq!(count(&app, "/v1/deny").await, 0);
}

#[tokio::test]
async fn a_full_table_is_a_conflict_and_changes_nothing() {
    let app = router(3);
    let (s, _) = post(
        &app,
        "/v1/deny",
        json!([{"cidr": "10.0.0.0/8"}, {"cidr": "11.0.0.0/8"}]),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = post(
        &app,
        "/v1/allow",
        json!([{"cidr": "12.0.0.0/8"}, {"cidr": "13.0.0.0/8"}]),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(error_of(&v).contains("full"), "{v}");
    assert_eq!(count(&app, "/v1/allow").await, 0);
}

#[tokio::test]
async fn status_reports_rule_counts() {
    let app = router(100);
    post(&app, "/v1/deny", json!({"cidr": "10.0.0.0/8"})).await;
    post(&app, "/v1/allow", json!({"cidr": "10.1.0.0/16"})).await;
    let (s, v) = call(&app, "GET", "/v1/status", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["rules"], json!({"deny": 1, "allow": 1, "max_rules": 100}));
    assert_eq!(v["abi_version"], sluice_abi::ABI_VERSION);
    for k in ["pass", "allow", "deny", "unparsed", "non_ip"] {
        assert!(v["verdicts"].get(k).is_some(), "verdict {k} missing: {v}");
    }
}

#[tokio::test]
async fn forwards_and_redirects_round_trip_and_refuse_bad_input() {
    let app = router(16);
    let (s, f) = post(
        &app,
        "/v1/forwards",
        json!({"match": "198.18.250.1:80/udp", "to": ["198.18.2.2:5353", "198.18.3.2:5353"], "comment": "dns"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{f}");
    assert_eq!(f["proto"], "udp");
    assert_eq!(f["match"], "198.18.250.1:80");
    assert_eq!(f["to"], json!(["198.18.2.2:5353", "198.18.3.2:5353"]));
    let bad = [
        (
            json!({"match": "198.18.250.2:0", "to": ["198.18.2.2:80"]}),
            400,
            "out of range",
        ),
        (
            json!({"match": "198.18.250.2:80", "to": ["198.18.2.2:70000"]}),
            400,
            "out of range",
        ),
        (
            json!({"match": "198.18.250.2:80", "to": []}),
            400,
            "at least one target",
        ),
        (
            json!({"match": "198.18.250.2:80", "to": ["[2001:2::2]:80"]}),
            400,
            "address families",
        ),
        (
            json!({"match": "198.18.250.2:80", "to": ["198.18.250.2:80"]}),
            400,
            "loop",
        ),
        (
            json!({"match": "198.18.250.1:80/udp", "to": ["198.18.9.9:80"]}),
            409,
            "already exists",
        ),
        (json!({"match": "198.18.250.2:80", "to": "198.18.2.2:80"}), 422, ""),
        (
            json!({"match": "198.18.250.2:80", "to": ["x"], "extra": 1}),
            422,
            "unknown field",
        ),
        (
            json!({"match": "x".repeat(5000), "to": ["198.18.2.2:80"]}),
            400,
            "not IP:PORT",
        ),
    ];
    for (body, code, needle) in bad {
        let (s, v) = post(&app, "/v1/forwards", body.clone()).await;
        assert_eq!(s.as_u16(), code, "{body}: {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    assert_eq!(count(&app, "/v1/forwards").await, 1, "bad input changed nothing");
    let (s, _) = call(&app, "DELETE", "/v1/forwards/99", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&app, "DELETE", "/v1/forwards/abc", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&app, "DELETE", &format!("/v1/forwards/{}", f["id"]), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(count(&app, "/v1/forwards").await, 0);

    // Redirects: the interface must exist; lo is not a veth.
    let (s, r) = post(&app, "/v1/redirects", json!({"cidr": "198.18.7.0/24", "iface": "lo"})).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["mode"], "egress");
    for (body, code, needle) in [
        (
            json!({"cidr": "198.18.8.0/24", "iface": "nope0"}),
            400,
            "does not exist",
        ),
        (
            json!({"cidr": "198.18.8.0/24", "iface": "../../etc"}),
            400,
            "not a valid interface name",
        ),
        (json!({"cidr": "198.18.8.1/24", "iface": "lo"}), 400, "host bits"),
        (json!({"cidr": "198.18.7.0/24", "iface": "lo"}), 409, "already exists"),
    ] {
        let (s, v) = post(&app, "/v1/redirects", body.clone()).await;
        assert_eq!(s.as_u16(), code, "{body}: {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    assert_eq!(count(&app, "/v1/redirects").await, 1);
    let (s, st) = call(&app, "GET", "/v1/status", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["forwarding"]["redirects"], 1, "{st}");
}

#[tokio::test]
async fn l7_queries_validate_their_filters() {
    let app = router(16);
    let (s, v) = call(&app, "GET", "/v1/l7?proto=http&since=10m&limit=5", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.as_array().unwrap().is_empty(), "no audit store in this test");
    for (q, needle) in [
        ("proto=smtp", "unknown protocol"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=100001", "limit"),
        ("limit=-1", ""),
        ("bogus=1", "unknown field"),
    ] {
        let (s, v) = call(&app, "GET", &format!("/v1/l7?{q}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(error_of(&v).contains(needle), "{q}: {v}");
    }
}
