//! Hostile input against every API route. Malformed, oversized and
//! out-of-range requests must each get a 4xx (never a 5xx, a panic or a
//! hang) whose body is `{"error": "..."}` with a non-empty message on one
//! printable line, and must change NOTHING: every list route (/v1/deny,
//! /v1/allow, /v1/limits, /v1/forwards, /v1/redirects, /v1/probes) and the
//! rule counts of /v1/status are snapshotted before and after every case
//! (ids and creation times included: a rule deleted and re-added is a
//! change).
//!
//! HOW TO EXTEND: the suite is a data table iterated by one driver
//! (`run_cases`). A new route is covered by adding it to `ROUTES` (path,
//! methods and, for a JSON body route, a `BodyRoute`): it then gets the
//! wrong-method (405), content-type (415), malformed-JSON (400/422),
//! oversize (413) and, for `.../{id}` routes, the bad-id rows for free. Its
//! own bad inputs are `Row`s in the per-route tables (`DENY_ROWS`, which
//! also run against /v1/allow, `LIMIT_ROWS`, `FORWARD_ROWS`,
//! `REDIRECT_ROWS`, `POLICY_ROWS`, `OTHER_ROWS`): (method, path,
//! content-type, body, expected status or status class, substring the error
//! must contain). A row that needs a generated body (huge arrays, long
//! strings) is pushed as a `Case` in `generated_rows`. A new route's body
//! also gets fuzzed once it has a `BodyRoute` (add valid bodies to
//! `templates` to mutate).
//!
//! Tiers:
//! - `every_route_refuses_hostile_input`: the whole table in-process,
//!   against `sluice::api::app(state)` with in-memory tables (no kernel, no
//!   root), through `tower::ServiceExt::oneshot`.
//! - `random_bodies_never_5xx_and_rejections_change_nothing`: 2,000 bodies
//!   per POST/PUT route (1,000 random byte strings, 1,000 random or mutated
//!   valid JSON values) from a seeded xorshift PRNG (SLUICE_FUZZ_SEED=N to
//!   vary it). A request may be accepted (2xx); a rejected one (4xx) must
//!   change nothing; none may be a 5xx or a non-JSON body.
//! - `a_real_daemon_refuses_hostile_http_on_its_socket` (needs root: it
//!   loads the BPF programs in a private pin directory; no interface is
//!   attached and no namespace is made): a sample of the table replayed
//!   over the daemon's unix socket, then raw HTTP abuse (bodies over 1 MiB,
//!   lying Content-Lengths, garbage and non-UTF-8 request lines, slow and
//!   idle clients), then a request flood that must get 429s and recover.
//!
//! A failing row never stops the others: every violation is collected and
//! the test fails once at the end, listing them all.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, http::Request, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sluice::{
    api::{app, Ctl, MAX_BATCH, MAX_BODY, MAX_POLICY_BODY},
    firewall::tables::MemFirewallTables,
    firewall::Firewall,
    limits::tables::MemLimitTables,
    limits::Limiter,
    store::Store,
    visibility::Hub,
};
use tower::ServiceExt;

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// What a case must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Exactly this status.
    Code(u16),
    /// Any 4xx.
    Any4xx,
    /// Any 2xx: the input is harmlessly ignored (e.g. a query string on a
    /// route that takes none). Nothing may change either.
    Any2xx,
}
use Want::{Any2xx, Any4xx, Code};

/// The JSON content type; `NO_CT` sends no Content-Type header at all.
const J: &str = "application/json";
const T: &str = "text/plain";
const NO_CT: &str = "";

/// One request and what it must get.
#[derive(Clone)]
struct Case {
    method: String,
    path: String,
    ctype: &'static str,
    body: Vec<u8>,
    want: Want,
    /// Substring the error message must contain ("" = any).
    needle: String,
}

impl Case {
    fn new(
        method: &str,
        path: impl Into<String>,
        ctype: &'static str,
        body: impl Into<Vec<u8>>,
        want: Want,
        needle: &str,
    ) -> Case {
        Case {
            method: method.into(),
            path: path.into(),
            ctype,
            body: body.into(),
            want,
            needle: needle.into(),
        }
    }

    /// The request, short enough to print (bodies are cut to 160 bytes).
    fn describe(&self) -> String {
        let b = &self.body;
        let shown = String::from_utf8_lossy(&b[..b.len().min(160)])
            .escape_debug()
            .to_string();
        let path = if self.path.len() > 160 {
            format!("{}...({} bytes)", &self.path[..160], self.path.len())
        } else {
            self.path.clone()
        };
        let more = if b.len() > 160 {
            format!("...({} bytes)", b.len())
        } else {
            String::new()
        };
        let ct = if self.ctype.is_empty() {
            "no content-type".to_string()
        } else {
            self.ctype.to_string()
        };
        format!("{} {} [{ct}] body \"{shown}\"{more}", self.method, path)
    }

    /// The route template this case is counted under.
    fn route(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("");
        let segs: Vec<&str> = path.split('/').collect();
        ROUTES
            .iter()
            .find(|r| {
                let t: Vec<&str> = r.path.split('/').collect();
                t.len() == segs.len()
                    && t.iter()
                        .zip(&segs)
                        .all(|(t, s)| if t.starts_with('{') { !s.is_empty() } else { t == s })
            })
            .map_or("(unknown routes)".into(), |r| r.path.to_string())
    }
}

/// What a JSON body route needs for the generic body rows.
struct BodyRoute {
    method: &'static str,
    /// A string field of the request.
    str_field: &'static str,
    /// What `{}` gets.
    empty_object: Want,
    /// A body with a key given twice (ambiguous; must be refused).
    dup_body: &'static str,
    /// A valid request (it would succeed), for rows that wrap it in
    /// something invalid: a 4xx then proves it was not applied.
    valid: &'static str,
    /// The valid request as a positional JSON array (serde accepts that
    /// for structs; the API documents objects only).
    positional: &'static str,
    /// The list route that shows what it changes ("" = all of them).
    list: &'static str,
    /// The route's body cap.
    max_body: usize,
}

/// Every route: its path template, a concrete path (for `{id}` an id that
/// exists nowhere), its methods, and its JSON body if it takes one.
struct Route {
    path: &'static str,
    example: &'static str,
    methods: &'static [&'static str],
    body: Option<BodyRoute>,
}

const fn rules_body(list: &'static str) -> Option<BodyRoute> {
    Some(BodyRoute {
        method: "POST",
        str_field: "cidr",
        empty_object: Code(422),
        dup_body: r#"{"cidr":"198.18.77.0/24","cidr":"198.18.78.0/24"}"#,
        valid: r#"{"cidr":"198.18.70.0/24"}"#,
        positional: r#"[["198.18.71.0/24"]]"#,
        list,
        max_body: MAX_BODY,
    })
}

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    Route { path: "/v1/status", example: "/v1/status", methods: &["GET"], body: None },
    Route { path: "/v1/deny", example: "/v1/deny", methods: &["GET", "POST", "DELETE"], body: rules_body("/v1/deny") },
    Route { path: "/v1/deny/{id}", example: "/v1/deny/987654", methods: &["DELETE"], body: None },
    Route { path: "/v1/allow", example: "/v1/allow", methods: &["GET", "POST", "DELETE"], body: rules_body("/v1/allow") },
    Route { path: "/v1/allow/{id}", example: "/v1/allow/987654", methods: &["DELETE"], body: None },
    Route {
        path: "/v1/limits",
        example: "/v1/limits",
        methods: &["GET", "POST"],
        body: Some(BodyRoute {
            method: "POST",
            str_field: "comment",
            empty_object: Code(400),
            dup_body: r#"{"src":"198.18.77.0/24","pps":100,"pps":200}"#,
            valid: r#"{"src":"198.18.70.0/24","pps":100}"#,
            positional: r#"["198.18.71.0/24",null,null,100]"#,
            list: "/v1/limits",
            max_body: MAX_BODY,
        }),
    },
    Route { path: "/v1/limits/{id}", example: "/v1/limits/987654", methods: &["DELETE"], body: None },
    Route {
        path: "/v1/forwards",
        example: "/v1/forwards",
        methods: &["GET", "POST"],
        body: Some(BodyRoute {
            method: "POST",
            str_field: "match",
            empty_object: Code(422),
            dup_body: r#"{"match":"198.18.250.77:80","match":"198.18.250.78:80","to":["198.18.2.2:80"]}"#,
            valid: r#"{"match":"198.18.250.70:80","to":["198.18.2.70:80"]}"#,
            positional: r#"["198.18.250.71:80",["198.18.2.71:80"]]"#,
            list: "/v1/forwards",
            max_body: MAX_BODY,
        }),
    },
    Route { path: "/v1/forwards/{id}", example: "/v1/forwards/987654", methods: &["DELETE"], body: None },
    Route {
        path: "/v1/redirects",
        example: "/v1/redirects",
        methods: &["GET", "POST"],
        body: Some(BodyRoute {
            method: "POST",
            str_field: "iface",
            empty_object: Code(422),
            dup_body: r#"{"cidr":"198.18.77.0/24","cidr":"198.18.78.0/24","iface":"lo"}"#,
            valid: r#"{"cidr":"198.18.70.0/24","iface":"lo"}"#,
            positional: r#"["198.18.71.0/24","lo"]"#,
            list: "/v1/redirects",
            max_body: MAX_BODY,
        }),
    },
    Route { path: "/v1/redirects/{id}", example: "/v1/redirects/987654", methods: &["DELETE"], body: None },
    Route { path: "/v1/l7", example: "/v1/l7", methods: &["GET"], body: None },
    Route { path: "/v1/probes", example: "/v1/probes", methods: &["GET"], body: None },
    // Generic rows use dry_run=true: a valid policy replaces every rule.
    Route {
        path: "/v1/policy",
        example: "/v1/policy?dry_run=true",
        methods: &["GET", "POST"],
        body: Some(BodyRoute {
            method: "POST",
            str_field: "deny",
            // A policy must say its version.
            empty_object: Code(400),
            dup_body: r#"{"version":1,"version":1}"#,
            valid: r#"{"version":1}"#,
            positional: r#"[1]"#,
            list: "",
            max_body: MAX_POLICY_BODY,
        }),
    },
    Route {
        path: "/v1/probes/stats",
        example: "/v1/probes/stats",
        methods: &["PUT"],
        body: Some(BodyRoute {
            method: "PUT",
            str_field: "enabled",
            empty_object: Code(422),
            dup_body: r#"{"enabled":false,"enabled":false}"#,
            valid: r#"{"enabled":false}"#,
            positional: r#"[false]"#,
            list: "/v1/probes",
            max_body: MAX_BODY,
        }),
    },
    Route {
        path: "/v1/probes/{kind}/{attach}",
        example: "/v1/probes/xdp/sluicetest0",
        methods: &["PUT"],
        body: Some(BodyRoute {
            method: "PUT",
            str_field: "enabled",
            empty_object: Code(422),
            dup_body: r#"{"enabled":false,"enabled":false}"#,
            valid: r#"{"enabled":false}"#,
            positional: r#"[false]"#,
            list: "/v1/probes",
            max_body: MAX_BODY,
        }),
    },
    Route { path: "/v1/events", example: "/v1/events?kind=bogus", methods: &["GET"], body: None },
    Route { path: "/v1/events/recent", example: "/v1/events/recent", methods: &["GET"], body: None },
    Route { path: "/v1/conns", example: "/v1/conns", methods: &["GET"], body: None },
    Route { path: "/metrics", example: "/metrics", methods: &["GET"], body: None },
];

/// (method, path, content-type, body, expected, substring of the error).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Want,
    &'static str,
);

/// Route-specific rows. `/v1/deny` rows are run against `/v1/allow` too
/// (see `all_cases`).
#[rustfmt::skip]
const DENY_ROWS: &[Row] = &[
    // POST /v1/{deny,allow}/import: text, all or nothing, errors name the line.
    ("POST", "/v1/deny/import", J, "10.0.0.0/8\n", Code(415), "text/plain"),
    ("POST", "/v1/deny/import", NO_CT, "10.0.0.0/8\n", Code(415), "text/plain"),
    ("POST", "/v1/deny/import", T, "10.0.0.0/8\n10.0.0.0/33\n", Code(400), "line 2"),
    ("POST", "/v1/deny/import", T, "# a\n10.0.0.0/8\n10.0.0.0/8\n", Code(400), "listed twice (first on line 2)"),
    ("POST", "/v1/deny/import", T, "# only comments\n\n", Code(400), "no CIDRs"),
    ("POST", "/v1/deny/import", T, "", Code(400), "no CIDRs"),
    ("POST", "/v1/deny/import", T, "10.1.2.3/8\n", Code(400), "host bits"),
    ("POST", "/v1/deny/import?bogus=1", T, "10.0.0.0/8\n", Code(400), "unknown field"),
    ("POST", "/v1/deny/import?dst=maybe", T, "10.0.0.0/8\n", Code(400), ""),
    ("POST", "/v1/deny/import?comment=a%0Ab", T, "10.0.0.0/8\n", Code(400), "control"),
    ("POST", "/v1/allow/import", T, "10.0.0.0/8\nfe80::1%eth0\n", Code(400), "line 2"),
    ("GET", "/v1/deny/import", NO_CT, "", Code(405), ""),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/33"}"#, Code(400), "prefix length 33"),
    ("POST", "/v1/deny", J, r#"{"cidr":"::/129"}"#, Code(400), "prefix length 129"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/4294967296"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/-1"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"/8"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.1.2.3/8"}"#, Code(400), "did you mean 10.0.0.0/8"),
    ("POST", "/v1/deny", J, r#"{"cidr":"2001:db8::1/32"}"#, Code(400), "host bits"),
    ("POST", "/v1/deny", J, r#"{"cidr":"::ffff:1.2.3.4"}"#, Code(400), "IPv4-mapped"),
    ("POST", "/v1/deny", J, r#"{"cidr":"1.2.3.4.5"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"256.0.0.0/8"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":""}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/8\u0000"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/8\n11.0.0.0/8"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":"10.0.0.0/8,11.0.0.0/8"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/deny", J, r#"{"cidr":5}"#, Code(422), "cidr"),
    ("POST", "/v1/deny", J, r#"{"cidr":null}"#, Code(422), "cidr"),
    ("POST", "/v1/deny", J, r#"{"cidr":["10.0.0.0/8"]}"#, Code(422), "cidr"),
    ("POST", "/v1/deny", J, r#"{"cidr":{"a":1}}"#, Code(422), "cidr"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","dst":"yes"}"#, Code(422), "dst"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","dst":1}"#, Code(422), "dst"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","dst":null}"#, Code(422), "dst"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","comment":5}"#, Code(422), "comment"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","comment":"a\u0000b"}"#, Code(400), "control"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","comment":"a\nb"}"#, Code(400), "control"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","comment":"\u001b[2J"}"#, Code(400), "control"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","comment":"del\u007f"}"#, Code(400), "control"),
    ("POST", "/v1/deny", J, r#"{"cidr":"198.18.50.0/24","comment":"nel\u0085"}"#, Code(400), "control"),
    ("POST", "/v1/deny", J, r#"[]"#, Code(400), "no rules"),
    ("POST", "/v1/deny", J, r#"[{"cidr":"198.18.51.0/24"},{"cidr":"nope"}]"#, Code(400), "rule 2"),
    ("POST", "/v1/deny", J, r#"[{"cidr":"198.18.52.0/24"},{"cidr":"198.18.52.0/24"}]"#, Code(400), "twice"),
    ("POST", "/v1/deny", J, r#"[{"cidr":"198.18.54.0/24"},5]"#, Code(422), "rule 2"),
    ("POST", "/v1/deny", J, r#"[{"cidr":"198.18.55.0/24"},{"cidr":"198.18.56.0/24","bogus":1}]"#, Code(422), "rule 2"),
    ("POST", "/v1/deny", J, r#"[[{"cidr":"198.18.57.0/24"}]]"#, Code(422), "rule 1"),
    // Delete by CIDR: the query is validated like a body.
    ("DELETE", "/v1/deny", J, "", Code(400), "cidr"),
    ("DELETE", "/v1/deny?cidr=", J, "", Code(400), "invalid CIDR"),
    ("DELETE", "/v1/deny?cidr=10.0.0.0%2F33", J, "", Code(400), "prefix length 33"),
    ("DELETE", "/v1/deny?cidr=%3A%3A%2F129", J, "", Code(400), "prefix length 129"),
    ("DELETE", "/v1/deny?cidr=10.1.2.3%2F8", J, "", Code(400), "host bits"),
    ("DELETE", "/v1/deny?cidr=%3A%3Affff%3A1.2.3.4", J, "", Code(400), "IPv4-mapped"),
    ("DELETE", "/v1/deny?cidr=abc", J, "", Code(400), "invalid CIDR"),
    ("DELETE", "/v1/deny?cidr=%00", J, "", Code(400), "invalid CIDR"),
    ("DELETE", "/v1/deny?cidr=198.18.1.2%00", J, "", Code(400), "invalid CIDR"),
    ("DELETE", "/v1/deny?cidr=%FF%FE", J, "", Code(400), ""),
    ("DELETE", "/v1/deny?cidr=1.2.3.4%2F8%2F8", J, "", Code(400), "invalid CIDR"),
    ("DELETE", "/v1/deny?cidr=198.18.1.2&dst=maybe", J, "", Code(400), ""),
    ("DELETE", "/v1/deny?cidr=198.18.1.2&dst=1", J, "", Code(400), ""),
    ("DELETE", "/v1/deny?cidr=198.18.1.2&dst=", J, "", Code(400), ""),
    ("DELETE", "/v1/deny?cidr=198.18.1.2&bogus=1", J, "", Code(400), "unknown field"),
    ("DELETE", "/v1/deny?cidr=198.18.1.2&cidr=198.18.1.3", J, "", Code(400), "duplicate field"),
    ("DELETE", "/v1/deny?%0Abogus%1B%5B2J=1&cidr=198.18.1.2", J, "", Code(400), "unknown field"),
    ("DELETE", "/v1/deny?cidr=198.18.99.99", J, "", Code(404), ""),
];

#[rustfmt::skip]
const LIMIT_ROWS: &[Row] = &[
    ("POST", "/v1/limits", J, r#"{}"#, Code(400), "exactly one"),
    ("POST", "/v1/limits", J, r#"{"pps":null}"#, Code(400), "exactly one"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"bps":1000}"#, Code(400), "exactly one"),
    ("POST", "/v1/limits", J, r#"{"pps":1,"bps":1,"conns":1}"#, Code(400), "exactly one"),
    ("POST", "/v1/limits", J, r#"{"pps":0}"#, Code(400), "positive"),
    ("POST", "/v1/limits", J, r#"{"pps":-1}"#, Code(400), "positive"),
    ("POST", "/v1/limits", J, r#"{"bps":-1000}"#, Code(400), "positive"),
    ("POST", "/v1/limits", J, r#"{"conns":0}"#, Code(400), "positive"),
    ("POST", "/v1/limits", J, r#"{"pps":-9223372036854775808}"#, Code(400), "positive"),
    ("POST", "/v1/limits", J, r#"{"pps":9223372036854775807}"#, Code(400), "maximum"),
    ("POST", "/v1/limits", J, r#"{"pps":1000000001}"#, Code(400), "maximum"),
    ("POST", "/v1/limits", J, r#"{"conns":1000000001}"#, Code(400), "maximum"),
    ("POST", "/v1/limits", J, r#"{"bps":1000000000001}"#, Code(400), "maximum"),
    ("POST", "/v1/limits", J, r#"{"pps":18446744073709551616}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":18446744073709551615}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":1e30}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":-1e30}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":1.5}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":"1000"}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":true}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":[1000]}"#, Code(422), "pps"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"burst":0}"#, Code(400), "burst"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"burst":-1}"#, Code(400), "burst"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"burst":9223372036854775807}"#, Code(400), "hour"),
    ("POST", "/v1/limits", J, r#"{"pps":1,"burst":3601}"#, Code(400), "hour"),
    ("POST", "/v1/limits", J, r#"{"bps":10000,"burst":100}"#, Code(400), "smaller than one packet"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"burst":18446744073709551616}"#, Code(422), "burst"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"src":"10.0.0.0/33"}"#, Code(400), "prefix length 33"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst":"::/129"}"#, Code(400), "prefix length 129"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"src":"10.0.0.1/8"}"#, Code(400), "host bits"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"src":"10.0.0.0/8","dst":"2001:2::/48"}"#, Code(400), "address family"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"src":""}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"src":5}"#, Code(422), "src"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"0"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"65536"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"-1"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":""}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"99999999999999999999"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"80/sctp"}"#, Code(400), "unknown protocol"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"80/"}"#, Code(400), "unknown protocol"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"/tcp"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"80/tcp/udp"}"#, Code(400), "protocol"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"80\u0000"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":"٨٠"}"#, Code(400), "invalid port"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"dst_port":80}"#, Code(422), "dst_port"),
    ("POST", "/v1/limits", J, r#"{"conns":10,"dst_port":"53/udp"}"#, Code(400), "TCP"),
    ("POST", "/v1/limits", J, r#"{"conns":10,"dst_port":"\n53\n/udp"}"#, Code(400), "TCP"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":""}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"0s"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"-5s"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"1ns"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"2h"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"10 parsecs"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"99999999999999999999s"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":"10s\u0000"}"#, Code(400), "warm-up"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"warmup":10}"#, Code(422), "warmup"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"per_source":"true"}"#, Code(422), "per_source"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"per_source":1}"#, Code(422), "per_source"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"comment":"a\u0000b"}"#, Code(400), "control"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"comment":"a\nb"}"#, Code(400), "control"),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"comment":5}"#, Code(422), "comment"),
    ("POST", "/v1/limits", J, r#"{"src":"198.18.1.0/24","pps":1000}"#, Code(409), "conflicts with limit rule"),
    ("POST", "/v1/limits", J, r#"[{"pps":1000}]"#, Code(422), ""),
    ("POST", "/v1/limits", J, r#"{"pps":1000,"src":"198.18.60.0/24","rate":5}"#, Code(422), "rate"),
];

#[rustfmt::skip]
const FORWARD_ROWS: &[Row] = &[
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:0","to":["198.18.2.2:80"]}"#, Code(400), "out of range"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:65536","to":["198.18.2.2:80"]}"#, Code(400), "out of range"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:4294967376","to":["198.18.2.2:80"]}"#, Code(400), "out of range"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:99999999999","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:-1","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:+80","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"[::1]:80","to":["[2001:2::2]:80"]}"#, Code(400), "loopback"),
    ("POST", "/v1/forwards", J, r#"{"match":"127.0.0.1:80","to":["198.18.2.2:80"]}"#, Code(400), "loopback"),
    ("POST", "/v1/forwards", J, r#"{"match":"0.0.0.0:80","to":["198.18.2.2:80"]}"#, Code(400), "unspecified"),
    ("POST", "/v1/forwards", J, r#"{"match":"224.0.0.1:80","to":["198.18.2.2:80"]}"#, Code(400), "multicast"),
    ("POST", "/v1/forwards", J, r#"{"match":"255.255.255.255:80","to":["198.18.2.2:80"]}"#, Code(400), "broadcast"),
    ("POST", "/v1/forwards", J, r#"{"match":"[::ffff:198.18.250.2]:80","to":["198.18.2.2:80"]}"#, Code(400), "IPv4-mapped"),
    ("POST", "/v1/forwards", J, r#"{"match":"[fe80::1%lo]:80","to":["[fe80::2]:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80/sctp","to":["198.18.2.2:80"]}"#, Code(400), "unknown protocol"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80/tcp/udp","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80\u0000","to":["198.18.2.2:80"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":[]}"#, Code(400), "at least one target"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:0"]}"#, Code(400), "out of range"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:65536"]}"#, Code(400), "out of range"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:80/udp"]}"#, Code(400), "takes no protocol"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["[2001:2::2]:80"]}"#, Code(400), "address families"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.250.2:80"]}"#, Code(400), "loop"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.2.2:8080","to":["198.18.250.1:80"]}"#, Code(400), "loop"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:80","198.18.2.2:80"]}"#, Code(400), "twice"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["127.0.0.1:80"]}"#, Code(400), "loopback"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["x"]}"#, Code(400), "not IP:PORT"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":"198.18.2.2:80"}"#, Code(422), "to"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":[5]}"#, Code(422), "to"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":null}"#, Code(422), "to"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80"}"#, Code(422), "missing field `to`"),
    ("POST", "/v1/forwards", J, r#"{"to":["198.18.2.2:80"]}"#, Code(422), "missing field `match`"),
    ("POST", "/v1/forwards", J, r#"{"match":80,"to":["198.18.2.2:80"]}"#, Code(422), "match"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:80"],"proto":"udp"}"#, Code(422), "proto"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:80"],"comment":"a\u0000b"}"#, Code(400), "control"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.2:80","to":["198.18.2.2:80"],"comment":"\u001b[2J"}"#, Code(400), "control"),
    ("POST", "/v1/forwards", J, r#"{"match":"198.18.250.1:80","to":["198.18.9.9:80"]}"#, Code(409), "already exists"),
];

#[rustfmt::skip]
const REDIRECT_ROWS: &[Row] = &[
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"../../etc/passwd"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"a/b"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":""}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"."}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":".."}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"lo:1"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"lo\u0000"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"lo\n"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"l o"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"ло"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"abcdefghijklmnop"}"#, Code(400), "not a valid interface name"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"abcdefghijklmno"}"#, Code(400), "does not exist"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"nope0"}"#, Code(400), "does not exist"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":5}"#, Code(422), "iface"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":null}"#, Code(422), "iface"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24"}"#, Code(422), "missing field `iface`"),
    ("POST", "/v1/redirects", J, r#"{"iface":"lo"}"#, Code(422), "missing field `cidr`"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"10.0.0.0/33","iface":"lo"}"#, Code(400), "prefix length 33"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"::/129","iface":"lo"}"#, Code(400), "prefix length 129"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.1/24","iface":"lo"}"#, Code(400), "host bits"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"::ffff:1.2.3.4","iface":"lo"}"#, Code(400), "IPv4-mapped"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"","iface":"lo"}"#, Code(400), "invalid CIDR"),
    ("POST", "/v1/redirects", J, r#"{"cidr":5,"iface":"lo"}"#, Code(422), "cidr"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"lo","comment":"a\u0000b"}"#, Code(400), "control"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.8.0/24","iface":"lo","comment":"\u001b[2J"}"#, Code(400), "control"),
    ("POST", "/v1/redirects", J, r#"{"cidr":"198.18.7.0/24","iface":"lo"}"#, Code(409), "already exists"),
];

/// POST /v1/policy without dry_run: each of these would replace the whole
/// rule set (the seeded rules are in none of them), so "nothing changed"
/// also proves that nothing was removed and every step was undone.
#[rustfmt::skip]
const POLICY_ROWS: &[Row] = &[
    ("POST", "/v1/policy", J, r#"{"version":2}"#, Code(400), "version 2"),
    ("POST", "/v1/policy", J, r#"{"version":0}"#, Code(400), "no `version`"),
    ("POST", "/v1/policy", J, r#"{"version":-1}"#, Code(422), "version"),
    ("POST", "/v1/policy", J, r#"{"version":4294967296}"#, Code(422), "version"),
    ("POST", "/v1/policy", J, r#"{"version":"1"}"#, Code(422), "version"),
    ("POST", "/v1/policy", J, r#"{"version":1,"deny":[{"cidr":"198.18.90.0/24"}],"limit":[{"pps":0}]}"#, Code(400), "limit[1]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"deny":[{"cidr":"198.18.90.0/24"},{"cidr":"10.0.0.0/33"}]}"#, Code(400), "deny[2]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"deny":[{"cidr":"198.18.90.0/24"},{"cidr":"198.18.90.0/24"}]}"#, Code(400), "twice"),
    ("POST", "/v1/policy", J, r#"{"version":1,"allow":[{"cidr":"198.18.90.0/24","comment":"a\u0000b"}]}"#, Code(400), "allow[1]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"limit":[{"pps":100,"src":"198.18.90.0/24"},{"pps":200,"src":"198.18.90.0/24"}]}"#, Code(400), "limit[2]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"limit":[{"pps":18446744073709551616}]}"#, Code(422), "pps"),
    ("POST", "/v1/policy", J, r#"{"version":1,"forward":[{"match":"198.18.250.90:0","to":["198.18.2.2:80"]}]}"#, Code(400), "forward[1]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"forward":[{"match":"198.18.250.90:80","to":["198.18.2.2:80"]},{"match":"198.18.250.90:80","to":["198.18.2.3:80"]}]}"#, Code(400), "forward[2]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"redirect":[{"cidr":"198.18.90.0/24","iface":"../../etc/passwd"}]}"#, Code(400), "redirect[1]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"probes":{"disabled":["bogus/x"]}}"#, Code(400), "probes.disabled[1]"),
    ("POST", "/v1/policy", J, r#"{"version":1,"probes":{"disabled":["xdp/..%2F..%2Fetc","xdp/../../etc"]}}"#, Code(400), "probes.disabled"),
    ("POST", "/v1/policy", J, r#"{"version":1,"probes":{"disabled":["xdp/sluicepol0","xdp/sluicepol0"]}}"#, Code(400), "twice"),
    ("POST", "/v1/policy", J, r#"{"version":1,"probes":{"disabled":"xdp/lo"}}"#, Code(422), "disabled"),
    ("POST", "/v1/policy", J, r#"{"version":1,"probes":{"enabled":[]}}"#, Code(422), "unknown field"),
    ("POST", "/v1/policy", J, r#"{"version":1,"deny":{"cidr":"198.18.90.0/24"}}"#, Code(422), "deny"),
    ("POST", "/v1/policy", J, r#"{"version":1,"limits":[]}"#, Code(422), "unknown field"),
    ("POST", "/v1/policy", J, r#"{"version":1,"deny":[{"cidr":"198.18.90.0/24","bogus":1}]}"#, Code(422), "bogus"),
    // Valid until a step fails (the interface does not exist): the deny
    // added, the probe disabled and the seeded rules removed are all undone.
    ("POST", "/v1/policy", J, r#"{"version":1,"deny":[{"cidr":"198.18.91.0/24"}],"probes":{"disabled":["xdp/sluicepol0"]},"redirect":[{"cidr":"198.18.91.0/24","iface":"nope0"}]}"#, Any4xx, ""),
    ("POST", "/v1/policy?dry_run=maybe", J, r#"{"version":1}"#, Code(400), ""),
    ("POST", "/v1/policy?dry_run=1", J, r#"{"version":1}"#, Code(400), ""),
    ("POST", "/v1/policy?bogus=1", J, r#"{"version":1}"#, Code(400), "unknown field"),
    ("POST", "/v1/policy?dry_run=true&dry_run=false", J, r#"{"version":1}"#, Code(400), "duplicate field"),
    ("GET", "/v1/policy?x=1", NO_CT, "", Any2xx, ""),
];

#[rustfmt::skip]
const OTHER_ROWS: &[Row] = &[
    // PUT /v1/probes/stats (a valid {"enabled": true} is never sent: it
    // would turn on kernel-wide BPF run statistics).
    ("PUT", "/v1/probes/stats", J, r#"{"enabled":1}"#, Code(422), "enabled"),
    ("PUT", "/v1/probes/stats", J, r#"{"enabled":"true"}"#, Code(422), "enabled"),
    ("PUT", "/v1/probes/stats", J, r#"{"enabled":null}"#, Code(422), "enabled"),
    ("PUT", "/v1/probes/stats", J, r#"{"enabled":false,"x":1}"#, Code(422), "unknown field"),
    ("PUT", "/v1/probes/stats", J, r#"{"Enabled":true}"#, Code(422), "unknown field"),
    ("PUT", "/v1/probes/stats", J, r#"[]"#, Code(422), ""),
    // PUT /v1/probes/{kind}/{attach}: the id is checked like an interface
    // name (a valid id is never sent: it would disable a probe).
    ("PUT", "/v1/probes/bogus/lo", J, r#"{"enabled":false}"#, Code(400), "unknown kind"),
    ("PUT", "/v1/probes/stats/x", J, r#"{"enabled":false}"#, Code(400), "unknown kind"),
    ("PUT", "/v1/probes/XDP/lo", J, r#"{"enabled":false}"#, Code(400), "unknown kind"),
    ("PUT", "/v1/probes/%00/lo", J, r#"{"enabled":false}"#, Code(400), "unknown kind"),
    ("PUT", "/v1/probes/xdp/..%2F..%2Fetc%2Fpasswd", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/a%2Fb", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/%2e%2e", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/%2e", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/lo%00", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/lo%0A%1B%5B2J", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/l%20o", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/lo%3A1", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/tc-ingress/abcdefghijklmnop", J, r#"{"enabled":false}"#, Code(400), "interface"),
    ("PUT", "/v1/probes/xdp/%FF%FE", J, r#"{"enabled":false}"#, Code(400), ""),
    ("PUT", "/v1/probes/trace/other", J, r#"{"enabled":false}"#, Code(400), "trace"),
    ("PUT", "/v1/probes/trace/..%2Fother", J, r#"{"enabled":false}"#, Code(400), "trace"),
    ("PUT", "/v1/probes/xdp/veth0%2Fforeign-12", J, r#"{"enabled":false}"#, Code(400), "other owners"),
    ("PUT", "/v1/probes/xdp/lo", J, r#"{"enabled":"no"}"#, Code(422), "enabled"),
    ("PUT", "/v1/probes/xdp/lo", J, r#"{"enabled":0}"#, Code(422), "enabled"),
    ("PUT", "/v1/probes/xdp/lo", J, r#"{"enabled":false,"id":"xdp/lo"}"#, Code(422), "unknown field"),
    ("PUT", "/v1/probes/xdp/lo", NO_CT, r#"{"enabled":false}"#, Code(415), "Content-Type"),
    ("PUT", "/v1/probes/xdp", J, r#"{"enabled":false}"#, Code(404), "no such API route"),
    ("PUT", "/v1/probes/xdp/lo/extra", J, r#"{"enabled":false}"#, Code(404), "no such API route"),
    // GET /v1/l7?proto=&since=&limit=
    ("GET", "/v1/l7?proto=smtp", NO_CT, "", Code(400), "unknown protocol"),
    ("GET", "/v1/l7?proto=", NO_CT, "", Code(400), "unknown protocol"),
    ("GET", "/v1/l7?proto=%00", NO_CT, "", Code(400), "unknown protocol"),
    ("GET", "/v1/l7?proto=http%0A%1B%5B2J", NO_CT, "", Code(400), "unknown protocol"),
    ("GET", "/v1/l7?since=yesterday", NO_CT, "", Code(400), "since"),
    ("GET", "/v1/l7?since=", NO_CT, "", Code(400), "since"),
    ("GET", "/v1/l7?since=-5m", NO_CT, "", Code(400), "since"),
    ("GET", "/v1/l7?since=99999999999999999999y", NO_CT, "", Code(400), "since"),
    ("GET", "/v1/l7?since=10m%00", NO_CT, "", Code(400), "since"),
    ("GET", "/v1/l7?limit=0", NO_CT, "", Code(400), "limit"),
    ("GET", "/v1/l7?limit=100001", NO_CT, "", Code(400), "limit"),
    ("GET", "/v1/l7?limit=-1", NO_CT, "", Code(400), ""),
    ("GET", "/v1/l7?limit=1e3", NO_CT, "", Code(400), ""),
    ("GET", "/v1/l7?limit=18446744073709551616", NO_CT, "", Code(400), ""),
    ("GET", "/v1/l7?limit=", NO_CT, "", Code(400), ""),
    ("GET", "/v1/l7?limit=abc", NO_CT, "", Code(400), ""),
    ("GET", "/v1/l7?bogus=1", NO_CT, "", Code(400), "unknown field"),
    ("GET", "/v1/l7?proto=http&proto=redis", NO_CT, "", Code(400), "duplicate field"),
    ("GET", "/v1/l7?limit=5&limit=6", NO_CT, "", Code(400), "duplicate field"),
    ("GET", "/v1/l7?%0Abogus%1B%5B2J=1", NO_CT, "", Code(400), "unknown field"),
    // GET /v1/events?kind= (only refused requests: a valid one streams
    // forever) and GET /v1/events/recent?kind=
    ("GET", "/v1/events?kind=bogus", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events?kind=conn,bogus", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events?kind=%00", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events?bogus=1", NO_CT, "", Code(400), "unknown field"),
    ("GET", "/v1/events?kind=conn&kind=drop", NO_CT, "", Code(400), "duplicate field"),
    ("GET", "/v1/events/recent?kind=bogus", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events/recent?kind=CONN", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events/recent?kind=conn%0Abogus", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events/recent?kind=%FF%FE", NO_CT, "", Code(400), "unknown event kind"),
    ("GET", "/v1/events/recent?bogus=1", NO_CT, "", Code(400), "unknown field"),
    ("GET", "/v1/events/recent?kind=conn&kind=drop", NO_CT, "", Code(400), "duplicate field"),
    // An unknown kind's error lists the valid kinds, l7 included.
    ("GET", "/v1/events/recent?kind=bogus", NO_CT, "", Code(400), "l7"),
    // Routes that take no query ignore one (documented, harmless).
    ("GET", "/v1/status?bogus=1&%00=%FF", NO_CT, "", Any2xx, ""),
    ("GET", "/v1/deny?cidr=not-a-cidr", NO_CT, "", Any2xx, ""),
    ("GET", "/v1/limits?x=1", NO_CT, "", Any2xx, ""),
    ("GET", "/v1/forwards?x=1", NO_CT, "", Any2xx, ""),
    ("GET", "/v1/redirects?x=1", NO_CT, "", Any2xx, ""),
    ("GET", "/v1/probes?x=1", NO_CT, "", Any2xx, ""),
    ("GET", "/v1/conns?x=1", NO_CT, "", Any2xx, ""),
    ("GET", "/metrics?x=1", NO_CT, "", Any2xx, ""),
    // Unknown routes.
    ("GET", "/", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v2/status", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/nope", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/status/", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/STATUS", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/deny/", NO_CT, "", Code(404), "no such API route"),
    ("DELETE", "/v1/deny/1/extra", NO_CT, "", Code(404), "no such API route"),
    ("DELETE", "/v1/deny/../../etc/passwd", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/l7/..%2F..%2Fetc%2Fpasswd", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/%2e%2e/v1/status", NO_CT, "", Code(404), "no such API route"),
    ("GET", "//v1/status", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/status%3Fx=1", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/status%00", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/metrics/x", NO_CT, "", Code(404), "no such API route"),
    ("GET", "/v1/events/recent/x", NO_CT, "", Code(404), "no such API route"),
    ("POST", "/v1/nope", J, r#"{"cidr":"10.0.0.0/8"}"#, Code(404), "no such API route"),
    ("DELETE", "/v1/nope", NO_CT, "", Code(404), "no such API route"),
];

/// Ids of the seeded rules, for the rows that aim at them.
struct Seed {
    deny_id: i64,
    allow_id: i64,
    limit_id: i64,
    forward_id: i64,
    redirect_id: i64,
}

/// Rows built at run time: generated bodies, and the generic rows every
/// route in `ROUTES` gets.
#[rustfmt::skip]
fn generated_rows(seed: &Seed) -> Vec<Case> {
    let mut v = Vec::new();
    let long = |n: usize, c: &str| c.repeat(n);

    // Generic rows from ROUTES.
    for r in ROUTES {
        // Wrong methods.
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if !r.methods.contains(&m) {
                v.push(Case::new(m, r.example, J, "", Code(405), ""));
            }
        }
        // Bad ids.
        if let Some(base) = r.path.strip_suffix("/{id}") {
            for (id, want, needle) in [
                ("0", Code(404), ""),
                ("-1", Code(404), ""),
                ("-9223372036854775808", Code(404), ""),
                ("9223372036854775807", Code(404), ""),
                ("9223372036854775808", Code(400), ""),
                ("18446744073709551616", Code(400), ""),
                ("99999999999999999999999999", Code(400), ""),
                ("abc", Code(400), ""),
                ("1.5", Code(400), ""),
                ("1e3", Code(400), ""),
                ("0x10", Code(400), ""),
                ("%201", Code(400), ""),
                ("1%20", Code(400), ""),
                ("%00", Code(400), ""),
                ("%0A1%1B%5B2J", Code(400), ""),
                ("..%2F..%2Fetc%2Fpasswd", Code(400), ""),
                ("%2e%2e", Code(400), ""),
                ("%FF%FE", Code(400), ""),
                ("%E2%80%AE1", Code(400), ""),
            ] {
                v.push(Case::new("DELETE", format!("{base}/{id}"), NO_CT, "", want, needle));
            }
            v.push(Case::new("DELETE", format!("{base}/{}", long(5000, "7")), NO_CT, "", Code(400), ""));
        }
        // JSON body rows.
        let Some(b) = &r.body else { continue };
        let (m, p, s) = (b.method, r.example, b.str_field);
        #[rustfmt::skip]
        let rows: Vec<(&'static str, Vec<u8>, Want, &str)> = vec![
            (NO_CT, b.valid.into(), Code(415), "Content-Type"),
            ("text/plain", b.valid.into(), Code(415), "Content-Type"),
            ("application/x-www-form-urlencoded", b"cidr=10.0.0.0%2F8".to_vec(), Code(415), "Content-Type"),
            ("multipart/form-data; boundary=x", b"--x\r\n\r\n{}\r\n--x--".to_vec(), Code(415), "Content-Type"),
            ("application/jsonx", b.valid.into(), Code(415), "Content-Type"),
            ("application/json;;;", b.valid.into(), Code(415), "Content-Type"),
            ("application/problem+xml", b.valid.into(), Code(415), "Content-Type"),
            (J, b"{not json".to_vec(), Code(400), ""),
            (J, b"".to_vec(), Code(400), ""),
            (J, format!("{{\"{s}\":").into(), Code(400), "EOF"),
            (J, format!("{} trailing", b.valid).into(), Code(400), "trailing"),
            (J, format!("{}{}", b.valid, b.valid).into(), Code(400), "trailing"),
            (J, format!("{}\0", b.valid).into(), Code(400), "trailing"),
            (J, "\u{feff}{}".into(), Code(400), ""),
            (J, format!("{{\"{s}\":\"") .into_bytes() .into_iter() .chain(*b"\xff\xfe\"}") .collect(), Any4xx, ""),
            (J, format!(r#"{{"{s}":"\ud800"}}"#).into(), Any4xx, ""),
            (J, format!("{{\"{s}\":\"a\0b\"}}").into(), Any4xx, ""),
            (J, b"null".to_vec(), Code(422), ""),
            (J, b"\"a string\"".to_vec(), Code(422), ""),
            (J, b"12345".to_vec(), Code(422), ""),
            (J, b"true".to_vec(), Code(422), ""),
            (J, b"[null]".to_vec(), Code(422), ""),
            (J, b.positional.into(), Code(422), ""),
            (J, b"{}".to_vec(), b.empty_object, ""),
            (J, br#"{"bogus":1}"#.to_vec(), Code(422), "bogus"),
            // The offending name is echoed: it must not break the line
            // or smuggle a terminal escape into the message.
            (J, br#"{"bo\ngus":1}"#.to_vec(), Code(422), "unknown field"),
            (J, br#"{"\u001b[2J\u001b[31mred":1}"#.to_vec(), Code(422), "unknown field"),
            (J, format!("{{\"{}\":1}}", long(100_000, "k")).into(), Code(422), "unknown field"),
            (J, long(200_000, "[").into(), Any4xx, ""),
            (J, long(100_000, "{\"a\":").into(), Any4xx, ""),
            (J, format!(r#"{{"{s}":1e999999}}"#).into(), Any4xx, ""),
            // JSON with a key given twice means different things to
            // different parsers; it must be refused, not resolved.
            (J, b.dup_body.into(), Code(422), "duplicate field"),
            // Over MAX_BODY: 413, whatever the JSON says.
            (J, format!("{{\"{s}\":\"{}\"}}", long(b.max_body, "a")).into(), Code(413), "larger than"),
            (J, long(b.max_body + 1, " ").into(), Code(413), "larger than"),
            // Exactly the cap is read and judged on its content.
            (J, format!("{{}}{}", long(b.max_body - 2, " ")).into(), b.empty_object, ""),
        ];
        for (ct, body, want, needle) in rows {
            v.push(Case::new(m, p, ct, body, want, needle));
        }
    }

    // Rule lists: long strings and big batches.
    for list in ["deny", "allow"] {
        let p = format!("/v1/{list}");
        let one = |cidr: &str, comment: &str| json!({"cidr": cidr, "comment": comment}).to_string();
        v.push(Case::new("POST", &p, J, json!({"cidr": long(10_000, "x")}).to_string(), Code(400), "invalid CIDR"));
        v.push(Case::new("POST", &p, J, one("198.18.50.0/24", &long(257, "a")), Code(400), "comment"));
        v.push(Case::new("POST", &p, J, one("198.18.50.0/24", &long(300, "ü")), Code(400), "comment"));
        v.push(Case::new("POST", &p, J, one("198.18.50.0/24", &long(100_000, "a")), Code(400), "comment"));
        // More than MAX_BATCH rules cannot fit in MAX_BODY (the smallest
        // rule object is 12 bytes), so such a request is a 413.
        let tiny = format!("[{}]", vec![r#"{"cidr":"1"}"#; MAX_BATCH + 1].join(","));
        v.push(Case::new("POST", &p, J, tiny, Code(413), "larger than"));
        // The largest batch that fits, all invalid: the first is named.
        let empty = format!("[{}]", vec![r#"{"cidr":""}"#; 80_000].join(","));
        v.push(Case::new("POST", &p, J, empty, Code(400), "rule 1:"));
        // 30,000 good rules then one bad, one duplicate of an existing
        // rule, or more than the table holds: all or nothing.
        let good: Vec<Value> = (0..30_000u32)
            .map(|i| json!({"cidr": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)}))
            .collect();
        let mut bad = good.clone();
        bad.push(json!({"cidr": "nope"}));
        v.push(Case::new("POST", &p, J, Value::from(bad).to_string(), Code(400), "rule 30001"));
        let mut dup = good.clone();
        let existing = if list == "deny" { "198.18.1.2" } else { "198.18.0.0/15" };
        dup.push(json!({"cidr": existing}));
        v.push(Case::new("POST", &p, J, Value::from(dup).to_string(), Code(409), "already exists"));
        v.push(Case::new("POST", &p, J, Value::from(good).to_string(), Code(409), "full"));
        v.push(Case::new("DELETE", format!("{p}?cidr={}", long(10_000, "x")), NO_CT, "", Code(400), "invalid CIDR"));
    }
    // Cross-list ids: a rule of one list is not found through another.
    v.push(Case::new("DELETE", format!("/v1/deny/{}", seed.allow_id), NO_CT, "", Code(404), ""));
    v.push(Case::new("DELETE", format!("/v1/allow/{}", seed.deny_id), NO_CT, "", Code(404), ""));
    if seed.limit_id != seed.forward_id {
        v.push(Case::new("DELETE", format!("/v1/forwards/{}", seed.limit_id), NO_CT, "", Code(404), ""));
    }
    if seed.forward_id != seed.redirect_id {
        v.push(Case::new("DELETE", format!("/v1/redirects/{}", seed.forward_id), NO_CT, "", Code(404), ""));
    }

    // Limits, forwards, redirects: long strings and big arrays.
    v.push(Case::new("POST", "/v1/limits", J, json!({"pps": 1000, "comment": long(257, "a")}).to_string(), Code(400), "comment"));
    v.push(Case::new("POST", "/v1/limits", J, json!({"pps": 1000, "src": long(10_000, "1")}).to_string(), Code(400), "invalid CIDR"));
    v.push(Case::new("POST", "/v1/limits", J, json!({"pps": 1000, "dst_port": long(10_000, "8")}).to_string(), Code(400), "invalid port"));
    v.push(Case::new("POST", "/v1/limits", J, json!({"pps": 1000, "warmup": long(10_000, "9")}).to_string(), Code(400), "warm-up"));
    let fwd = |to: Value, comment: Option<String>| {
        let mut b = json!({"match": "198.18.250.2:80", "to": to});
        if let Some(c) = comment {
            b["comment"] = c.into();
        }
        b.to_string()
    };
    let targets = |n: u32| {
        Value::from(
            (0..n)
                .map(|i| format!("198.18.{}.{}:80", 2 + i / 250, 1 + i % 250))
                .collect::<Vec<_>>(),
        )
    };
    v.push(Case::new("POST", "/v1/forwards", J, fwd(targets(17), None), Code(400), "at most 16"));
    v.push(Case::new("POST", "/v1/forwards", J, fwd(targets(50_000), None), Code(400), "at most 16"));
    v.push(Case::new("POST", "/v1/forwards", J, fwd(targets(1), Some(long(257, "a"))), Code(400), "comment"));
    v.push(Case::new("POST", "/v1/forwards", J, json!({"match": long(5000, "x"), "to": ["198.18.2.2:80"]}).to_string(), Code(400), "not IP:PORT"));
    let redir = |iface: String, comment: Option<String>| {
        let mut b = json!({"cidr": "198.18.8.0/24", "iface": iface});
        if let Some(c) = comment {
            b["comment"] = c.into();
        }
        b.to_string()
    };
    v.push(Case::new("POST", "/v1/redirects", J, redir(long(300, "a"), None), Code(400), "not a valid interface name"));
    v.push(Case::new("POST", "/v1/redirects", J, redir(long(100_000, "a"), None), Code(400), "not a valid interface name"));
    v.push(Case::new("POST", "/v1/redirects", J, redir("lo".into(), Some(long(257, "a"))), Code(400), "comment"));
    v.push(Case::new("PUT", format!("/v1/probes/xdp/{}", long(300, "a")), J, r#"{"enabled":false}"#, Code(400), "interface"));
    v.push(Case::new("PUT", format!("/v1/probes/{}/lo", long(300, "a")), J, r#"{"enabled":false}"#, Code(400), "unknown kind"));

    // Big policies: 30,000 rules and one bad one; more rules than the
    // table holds (refused before anything is applied).
    let rules = |n: u32| (0..n).map(|i| json!({"cidr": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)})).collect::<Vec<_>>();
    let mut deny = rules(30_000);
    deny.push(json!({"cidr": "nope"}));
    v.push(Case::new("POST", "/v1/policy", J, json!({"version": 1, "deny": deny}).to_string(), Code(400), "deny[30001]"));
    v.push(Case::new("POST", "/v1/policy", J, json!({"version": 1, "deny": rules(1500)}).to_string(), Code(400), "max_rules = 1000 in total"));
    // The cap is for deny and allow together: 600 + 600 does not fit either.
    v.push(Case::new("POST", "/v1/policy", J, json!({"version": 1, "deny": rules(600), "allow": rules(600)}).to_string(), Code(400), "1200 deny and allow rules"));
    v.push(Case::new("POST", "/v1/policy", J, json!({"version": 1, "deny": [{"cidr": long(10_000, "x")}]}).to_string(), Code(400), "deny[1]"));

    // Queries and paths that are merely long.
    v.push(Case::new("GET", format!("/v1/l7?proto={}", long(10_000, "h")), NO_CT, "", Code(400), "unknown protocol"));
    v.push(Case::new("GET", format!("/v1/l7?since={}", long(10_000, "9")), NO_CT, "", Code(400), "since"));
    v.push(Case::new("GET", format!("/v1/events/recent?kind={}", long(5000, "x,")), NO_CT, "", Code(400), "unknown event kind"));
    v.push(Case::new("GET", format!("/v1/{}", long(20_000, "a")), NO_CT, "", Code(404), "no such API route"));
    v.push(Case::new("POST", "/v1/nope", J, long(2 * MAX_BODY, " "), Code(404), "no such API route"));
    v
}

/// Every case: the const rows (deny rows also against /v1/allow), the
/// generated ones.
fn all_cases(seed: &Seed) -> Vec<Case> {
    let mut v = Vec::new();
    for &(m, p, ct, body, want, needle) in DENY_ROWS {
        // The seeded allow rule is not in the deny list and vice versa, so
        // the row for 198.18.1.2 keeps its meaning only where it exists.
        for list in ["deny", "allow"] {
            let p = p.replacen("/v1/deny", &format!("/v1/{list}"), 1);
            v.push(Case::new(m, p, ct, body, want, needle));
        }
    }
    for rows in [LIMIT_ROWS, FORWARD_ROWS, REDIRECT_ROWS, POLICY_ROWS, OTHER_ROWS] {
        for &(m, p, ct, body, want, needle) in rows {
            v.push(Case::new(m, p, ct, body, want, needle));
        }
    }
    // Each list refuses its own duplicate, in an import too, naming the line.
    for (list, dup) in [("deny", "198.18.1.2"), ("allow", "198.18.0.0/15")] {
        v.push(Case::new(
            "POST",
            format!("/v1/{list}/import"),
            T,
            format!("198.18.91.0/24\n{dup}\n"),
            Code(409),
            "line 2: rule already exists",
        ));
    }
    v.push(Case::new(
        "POST",
        "/v1/deny",
        J,
        r#"{"cidr":"198.18.1.2"}"#,
        Code(409),
        "already exists",
    ));
    v.push(Case::new(
        "POST",
        "/v1/allow",
        J,
        r#"{"cidr":"198.18.0.0/15"}"#,
        Code(409),
        "already exists",
    ));
    v.push(Case::new(
        "POST",
        "/v1/deny",
        J,
        r#"[{"cidr":"198.18.53.0/24"},{"cidr":"198.18.1.2"}]"#,
        Code(409),
        "already exists",
    ));
    v.extend(generated_rows(seed));
    v
}

// ---------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------

/// A response: status, content-type, body.
struct Resp {
    status: u16,
    ctype: String,
    body: Vec<u8>,
}

/// Sends one request to something that answers HTTP. `Err` is a panic, a
/// hang or a request that could not be sent.
trait Target {
    async fn send(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> Result<Resp, String>;
}

/// The router in-process.
struct InProcess(Router);

impl Target for InProcess {
    async fn send(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> Result<Resp, String> {
        let mut req = Request::builder().method(method).uri(path);
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        let req = req
            .body(Body::from(body.to_vec()))
            .map_err(|e| format!("TEST BUG: cannot build the request: {e}"))?;
        let app = self.0.clone();
        // Spawned, so a panicking handler is reported, not fatal.
        let task = tokio::spawn(async move {
            let resp = app.oneshot(req).await.expect("infallible");
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes().to_vec());
            (status, ctype, body)
        });
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Err(_) => Err("HANG: no complete response within 20 s".into()),
            Ok(Err(e)) => Err(format!("PANIC in the handler: {e}")),
            Ok(Ok((_, _, Err(e)))) => Err(format!("body error: {e}")),
            Ok(Ok((status, ctype, Ok(body)))) => Ok(Resp { status, ctype, body }),
        }
    }
}

/// A real daemon over its unix socket: one HTTP/1.1 request per connection.
struct Socket(PathBuf);

impl Target for Socket {
    async fn send(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> Result<Resp, String> {
        let raw = http_request(method, path, ctype, body);
        let sock = self.0.clone();
        tokio::task::spawn_blocking(move || exchange(&sock, &raw, Duration::from_secs(10), false))
            .await
            .map_err(|e| e.to_string())?
            .and_then(|r| r.ok_or_else(|| "HANG: no response within 10 s".to_string()))
    }
}

/// Checks an error body: JSON `{"error": "..."}` only, the message
/// non-empty, one line, no control characters.
fn error_body_problem(r: &Resp) -> Option<String> {
    let text = String::from_utf8_lossy(&r.body);
    let shown: String = text.chars().take(300).collect::<String>().escape_debug().to_string();
    if !r.ctype.starts_with("application/json") {
        return Some(format!(
            "error body is not JSON (content-type {:?}): \"{shown}\"",
            r.ctype
        ));
    }
    let v: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(e) => return Some(format!("error body does not parse as JSON ({e}): \"{shown}\"")),
    };
    let Some(obj) = v.as_object() else {
        return Some(format!("error body is not an object: {shown}"));
    };
    if obj.len() != 1 {
        return Some(format!("error body has keys other than \"error\": {shown}"));
    }
    let Some(msg) = obj.get("error").and_then(Value::as_str) else {
        return Some(format!("no string \"error\" field: {shown}"));
    };
    if msg.trim().is_empty() {
        return Some("empty error message".into());
    }
    if let Some(c) = msg.chars().find(|c| c.is_control()) {
        return Some(format!(
            "error message is not one printable line (it contains {c:?}): {:?}",
            msg.chars().take(200).collect::<String>()
        ));
    }
    None
}

fn error_message(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What the list routes and the status rule counts say: volatile fields
/// (counters, uptime) left out.
type Snapshot = BTreeMap<&'static str, Value>;

const LISTS: [&str; 6] = [
    "/v1/deny",
    "/v1/allow",
    "/v1/limits",
    "/v1/forwards",
    "/v1/redirects",
    "/v1/probes",
];

async fn snapshot(t: &impl Target) -> Result<Snapshot, String> {
    let mut s = Snapshot::new();
    for p in LISTS.into_iter().chain(["/v1/status"]) {
        let r = t.send("GET", p, NO_CT, b"").await?;
        if r.status != 200 {
            return Err(format!("GET {p}: {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        let mut v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("GET {p}: {e}"))?;
        strip_volatile(&mut v);
        if p == "/v1/status" {
            v = json!({
                "rules": v["rules"],
                "limits": v["limits"]["rules"],
                "forwards": v["forwarding"]["forwards"],
                "redirects": v["forwarding"]["redirects"],
            });
        }
        s.insert(p, v);
    }
    Ok(s)
}

fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in [
                "packets",
                "bytes",
                "flows",
                "passed",
                "dropped",
                "sources",
                "evictions",
                "run_count",
                "run_time_ns",
                "uptime_secs",
            ] {
                m.remove(k);
            }
            m.values_mut().for_each(strip_volatile);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let cut = |v: &Value| {
        let s = v.to_string();
        if s.len() > 600 {
            format!("{}...({} bytes)", &s[..600], s.len())
        } else {
            s
        }
    };
    let mut out = Vec::new();
    for (k, va) in a {
        let vb = &b[k];
        if va != vb {
            out.push(format!("{k}: before {} after {}", cut(va), cut(vb)));
        }
    }
    out.join("; ")
}

/// Runs every case; returns the violations (empty: all good) and the
/// number of cases per route.
async fn run_cases(t: &impl Target, cases: &[Case], snapshot_each: bool) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut bad = Vec::new();
    let mut per_route = BTreeMap::new();
    let mut before = snapshot(t).await.expect("the first snapshot");
    let first = before.clone();
    for c in cases {
        *per_route.entry(c.route()).or_insert(0) += 1;
        let fail = |why: String| format!("{}\n      -> {why}", c.describe());
        let r = match t.send(&c.method, &c.path, c.ctype, &c.body).await {
            Ok(r) => r,
            Err(e) => {
                bad.push(fail(e));
                continue;
            }
        };
        let body_line = || {
            let s = String::from_utf8_lossy(&r.body);
            let s: String = s.chars().take(300).collect();
            format!("{} \"{}\"", r.status, s.escape_debug())
        };
        let status_ok = match c.want {
            Code(n) => r.status == n,
            Any4xx => (400..500).contains(&r.status),
            Any2xx => (200..300).contains(&r.status),
        };
        if r.status >= 500 {
            bad.push(fail(format!("5xx: got {}", body_line())));
        } else if !status_ok {
            bad.push(fail(format!("want {:?}, got {}", c.want, body_line())));
        }
        if (400..600).contains(&r.status) {
            if let Some(p) = error_body_problem(&r) {
                bad.push(fail(p));
            } else if !error_message(&r).contains(c.needle.as_str()) {
                bad.push(fail(format!(
                    "the error does not mention {:?}: {}",
                    c.needle,
                    body_line()
                )));
            }
        }
        if snapshot_each {
            match snapshot(t).await {
                Ok(after) => {
                    if after != before {
                        bad.push(fail(format!("STATE CHANGED ({}): {}", r.status, diff(&before, &after))));
                        before = after;
                    }
                }
                Err(e) => bad.push(fail(format!("the snapshot after it failed: {e}"))),
            }
        }
    }
    if !snapshot_each {
        match snapshot(t).await {
            Ok(after) if after != first => bad.push(format!("STATE CHANGED over the run: {}", diff(&first, &after))),
            Ok(_) => {}
            Err(e) => bad.push(format!("the final snapshot failed: {e}")),
        }
    }
    (bad, per_route)
}

/// The valid rules every table run starts from (`Seed` holds their ids).
async fn seed(t: &impl Target) -> Seed {
    let mut ids = Vec::new();
    for (p, body) in [
        ("/v1/deny", json!({"cidr": "198.18.1.2", "comment": "seed"})),
        ("/v1/deny", json!({"cidr": "2001:2::/48", "dst": true})),
        ("/v1/allow", json!({"cidr": "198.18.0.0/15"})),
        ("/v1/limits", json!({"src": "198.18.1.0/24", "pps": 1000})),
        (
            "/v1/forwards",
            json!({"match": "198.18.250.1:80", "to": ["198.18.2.2:8080"]}),
        ),
        ("/v1/redirects", json!({"cidr": "198.18.7.0/24", "iface": "lo"})),
    ] {
        let r = t.send("POST", p, J, body.to_string().as_bytes()).await.unwrap();
        assert_eq!(r.status, 201, "seeding {p}: {}", String::from_utf8_lossy(&r.body));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        ids.push(v["id"].as_i64().unwrap());
    }
    Seed {
        deny_id: ids[0],
        allow_id: ids[2],
        limit_id: ids[3],
        forward_id: ids[4],
        redirect_id: ids[5],
    }
}

fn router(capacity: u32) -> Router {
    let (fw, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(MemFirewallTables::new(capacity))).unwrap();
    let limits = Limiter::open(Store::in_memory().unwrap(), Box::new(MemLimitTables::default())).unwrap();
    app(Arc::new(Ctl::with_doubles(fw, limits, Hub::new(100))))
}

fn report(title: &str, bad: &[String], per_route: &BTreeMap<String, usize>, total: usize, took: Duration) {
    eprintln!("{title}: {total} cases in {took:.2?}; per route:");
    for (r, n) in per_route {
        eprintln!("  {n:5}  {r}");
    }
    if !bad.is_empty() {
        panic!(
            "{} violation(s) of the hostile-input contract:\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_hostile_input() {
    let t = InProcess(router(1000));
    let seed = seed(&t).await;
    let cases = all_cases(&seed);
    let start = Instant::now();
    let (bad, per_route) = run_cases(&t, &cases, true).await;
    // The request counter of /metrics is keyed by route template, so even
    // this many odd paths leave it small.
    let m = t.send("GET", "/metrics", NO_CT, b"").await.unwrap();
    assert_eq!(m.status, 200);
    let series = String::from_utf8_lossy(&m.body)
        .lines()
        .filter(|l| l.starts_with("sluice_api_requests"))
        .count();
    assert!(
        series < 200,
        "{series} api_requests series after {} hostile requests",
        cases.len()
    );
    report("in-process table", &bad, &per_route, cases.len(), start.elapsed());
}

// ---------------------------------------------------------------------------
// Property-style fuzzing
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic, seedable, good enough to pick inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const WORDS: &[&str] = &[
    "",
    " ",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "10.1.2.3/8",
    "::/129",
    "::/0",
    "0.0.0.0/0",
    "::ffff:1.2.3.4",
    "2001:2::/48",
    "198.18.250.9:80",
    "198.18.250.9:0",
    "198.18.250.9:65536",
    "[::1]:80",
    "[2001:2::9]:443",
    "198.18.2.2:80/udp",
    "198.18.250.1:80",
    "80",
    "0",
    "65536",
    "-1",
    "80/tcp",
    "53/udp",
    "80/sctp",
    "lo",
    "../../etc/passwd",
    "a/b",
    "nope0",
    "10s",
    "0s",
    "-1s",
    "2h",
    "1ns",
    "http",
    "conn",
    "true",
    "null",
    "\u{0}",
    "\n",
    "\u{1b}[2J",
    "\u{7f}",
    "\u{feff}",
    "\u{202e}",
    "é",
    "1e30",
    "18446744073709551616",
    "%2e%2e%2f",
];

const FIELDS: &[&str] = &[
    "cidr",
    "dst",
    "comment",
    "src",
    "dst_port",
    "pps",
    "bps",
    "conns",
    "burst",
    "per_source",
    "warmup",
    "match",
    "to",
    "iface",
    "enabled",
    "bogus",
    "",
    "CIDR",
    "id",
];

fn random_string(r: &mut Rng) -> String {
    match r.below(4) {
        0 | 1 => r.pick(WORDS).to_string(),
        2 => {
            let n = *r.pick(&[1usize, 5, 20, 300, 5000]);
            (0..n)
                .map(|_| char::from_u32(r.below(0x80) as u32).unwrap_or('?'))
                .collect()
        }
        _ => {
            let n = r.below(40);
            (0..n)
                .map(|_| {
                    let c = match r.below(4) {
                        0 => r.below(0x20) as u32,
                        1 => 0x41 + r.below(26) as u32,
                        2 => 0x30 + r.below(10) as u32,
                        _ => r.below(0x11_0000) as u32,
                    };
                    char::from_u32(c).unwrap_or('\u{fffd}')
                })
                .collect()
        }
    }
}

fn random_number(r: &mut Rng) -> Value {
    let edges: &[&str] = &[
        "0",
        "-0",
        "1",
        "-1",
        "65535",
        "65536",
        "1000",
        "1518",
        "3600",
        "1000000000",
        "1000000001",
        "1000000000000",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "1e30",
        "-1e30",
        "1.5",
        "1e-30",
        "4294967296",
    ];
    if r.chance(70) {
        let text: &&str = r.pick(edges);
        serde_json::from_str(text).unwrap()
    } else {
        Value::from(r.next() as i64 >> r.below(64))
    }
}

fn random_value(r: &mut Rng, depth: u32) -> Value {
    let k = if depth >= 4 { r.below(4) } else { r.below(6) };
    match k {
        0 => Value::Null,
        1 => Value::Bool(r.chance(50)),
        2 => random_number(r),
        3 => Value::String(random_string(r)),
        4 => Value::Array((0..r.below(5)).map(|_| random_value(r, depth + 1)).collect()),
        _ => random_object(r, depth + 1),
    }
}

fn random_object(r: &mut Rng, depth: u32) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..r.below(6) {
        let key = if r.chance(85) {
            r.pick(FIELDS).to_string()
        } else {
            random_string(r)
        };
        m.insert(key, random_value(r, depth + 1));
    }
    Value::Object(m)
}

/// Valid bodies of a route, to mutate.
fn templates(path: &str) -> Vec<Value> {
    match path {
        "/v1/deny" | "/v1/allow" => vec![
            json!({"cidr": "198.18.60.0/24"}),
            json!({"cidr": "2001:2:60::/48", "dst": true, "comment": "x"}),
            json!([{"cidr": "198.18.61.0/24"}, {"cidr": "198.18.62.0/24"}]),
        ],
        "/v1/limits" => vec![
            json!({"src": "198.18.60.0/24", "pps": 100}),
            json!({"dst_port": "8080/tcp", "conns": 10, "per_source": true, "warmup": "10s"}),
            json!({"dst": "2001:2::/48", "bps": 100000, "burst": 20000, "comment": "x"}),
        ],
        "/v1/forwards" => vec![
            json!({"match": "198.18.250.60:80", "to": ["198.18.2.60:80"]}),
            json!({"match": "[2001:2::60]:53/udp", "to": ["[2001:2::61]:53", "[2001:2::62]:53"], "comment": "x"}),
        ],
        "/v1/redirects" => vec![
            json!({"cidr": "198.18.60.0/24", "iface": "lo"}),
            json!({"cidr": "2001:2:60::/48", "iface": "lo", "comment": "x"}),
        ],
        "/v1/policy" => vec![
            json!({"version": 1, "deny": [{"cidr": "198.18.60.0/24"}], "limit": [{"pps": 100, "src": "198.18.60.0/24"}]}),
            json!({"version": 1, "forward": [{"match": "198.18.250.60:80", "to": ["198.18.2.60:80"]}], "redirect": [{"cidr": "198.18.60.0/24", "iface": "lo"}]}),
            json!({"version": 1, "allow": [{"cidr": "2001:2:60::/48", "dst": true}], "probes": {"disabled": ["xdp/sluicefuzz0"]}}),
        ],
        _ => vec![json!({"enabled": false})],
    }
}

fn mutate(r: &mut Rng, v: &mut Value) {
    match v {
        Value::Array(a) if !a.is_empty() => {
            let i = r.below(a.len());
            mutate(r, &mut a[i]);
        }
        Value::Object(m) => {
            // Mostly a field the route has, sometimes any name.
            let key = if !m.is_empty() && r.chance(60) {
                m.keys().nth(r.below(m.len())).unwrap().clone()
            } else {
                r.pick(FIELDS).to_string()
            };
            match r.below(4) {
                0 => {
                    m.remove(&key);
                }
                1 => {
                    m.insert(key, random_value(r, 3));
                }
                2 => {
                    m.insert(key, Value::String(random_string(r)));
                }
                _ => {
                    m.insert(key, random_number(r));
                }
            }
        }
        _ => *v = random_value(r, 0),
    }
}

fn random_bytes(r: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[]\":,.-+0123456789eE truefalsnu\\/ \t\n\0\xff\xc3cidrpsmatchoiface";
    let n = match r.below(4) {
        0 => r.below(8),
        1 | 2 => r.below(128),
        _ => r.below(4096),
    };
    let uniform = r.chance(40);
    (0..n)
        .map(|_| if uniform { r.next() as u8 } else { *r.pick(ALPHABET) })
        .collect()
}

/// Random bodies for one route: raw bytes, random JSON, mutated valid ones.
fn fuzz_body(r: &mut Rng, path: &str, i: usize) -> Vec<u8> {
    if i.is_multiple_of(2) {
        return random_bytes(r);
    }
    let v = if r.chance(50) {
        let mut v = r.pick(&templates(path)).clone();
        for _ in 0..1 + r.below(3) {
            mutate(r, &mut v);
        }
        v
    } else if r.chance(70) {
        random_object(r, 0)
    } else {
        random_value(r, 0)
    };
    v.to_string().into_bytes()
}

/// The list a body route writes to, without counters ("": every list).
async fn list_of(t: &impl Target, list: &str) -> Value {
    if list.is_empty() {
        return serde_json::to_value(snapshot(t).await.unwrap()).unwrap();
    }
    let r = t.send("GET", list, NO_CT, b"").await.unwrap();
    assert_eq!(r.status, 200, "GET {list}");
    let mut v: Value = serde_json::from_slice(&r.body).unwrap();
    strip_volatile(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_never_5xx_and_rejections_change_nothing() {
    // Per route: 1,000 random byte strings and 1,000 random or mutated
    // JSON values. After each request the route's own list is compared;
    // every list (the full snapshot) every FULL_EVERY requests and after
    // every accepted request.
    const PER_ROUTE: usize = 2000;
    const FULL_EVERY: usize = 25;
    let seed_value: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5106_CE55);
    let mut rng = Rng(seed_value | 1);
    let t = InProcess(router(100_000));
    seed(&t).await;
    let start = Instant::now();
    let mut bad = Vec::new();
    let mut stats = Vec::new();
    let mut full = snapshot(&t).await.unwrap();
    let mut total = 0;
    for r in ROUTES {
        let Some(b) = &r.body else { continue };
        let (mut accepted, mut rejected) = (0, 0);
        let mut own = list_of(&t, b.list).await;
        for i in 0..PER_ROUTE {
            let body = fuzz_body(&mut rng, r.path, i);
            if r.path == "/v1/probes/stats"
                && serde_json::from_slice::<sluice::api::types::StatsRequest>(&body).is_ok_and(|q| q.enabled)
            {
                continue; // would turn on kernel-wide BPF run statistics
            }
            total += 1;
            // The real path (for /v1/policy: no dry run, so an accepted
            // policy is applied and a refused one must change nothing).
            let path = if r.path.contains('{') { r.example } else { r.path };
            let c = Case::new(b.method, path, J, body, Any4xx, "");
            let fail = |why: String| format!("seed {seed_value:#x} #{i}: {}\n      -> {why}", c.describe());
            let resp = match t.send(&c.method, &c.path, c.ctype, &c.body).await {
                Ok(x) => x,
                Err(e) => {
                    bad.push(fail(e));
                    continue;
                }
            };
            let own_after = list_of(&t, b.list).await;
            match resp.status {
                200..=299 => {
                    accepted += 1;
                    if serde_json::from_slice::<Value>(&resp.body).is_err() {
                        bad.push(fail(format!("{} with a non-JSON body", resp.status)));
                    }
                    full = snapshot(&t).await.unwrap();
                }
                400..=499 => {
                    rejected += 1;
                    if let Some(p) = error_body_problem(&resp) {
                        bad.push(fail(format!("{p} [status {}]", resp.status)));
                    }
                    if own_after != own {
                        bad.push(fail(format!(
                            "STATE CHANGED on a {}: {} before {own} after {own_after}",
                            resp.status, b.list
                        )));
                    }
                }
                s => bad.push(fail(format!("status {s}: {:?}", String::from_utf8_lossy(&resp.body)))),
            }
            own = own_after;
            if i % FULL_EVERY == FULL_EVERY - 1 {
                let now = snapshot(&t).await.unwrap();
                if now != full {
                    bad.push(format!(
                        "seed {seed_value:#x}: {} {} #{}..#{i}: STATE CHANGED by rejected requests: {}",
                        b.method,
                        r.path,
                        i + 1 - FULL_EVERY,
                        diff(&full, &now)
                    ));
                    full = now;
                }
            }
        }
        stats.push(format!(
            "{} {}: {accepted} accepted, {rejected} rejected",
            b.method, r.path
        ));
    }
    eprintln!(
        "fuzz (seed {seed_value:#x}): {total} requests in {:.2?}\n  {}",
        start.elapsed(),
        stats.join("\n  ")
    );
    // One bug can fail thousands of bodies: show one example per kind.
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for b in &bad {
        let why = b.split("-> ").nth(1).unwrap_or(b);
        let key: String = why.split([':', '(', '[']).next().unwrap_or(why).to_string();
        kinds.entry(key).or_insert((0, b.clone())).0 += 1;
    }
    if !bad.is_empty() {
        let lines: Vec<String> = kinds.values().map(|(n, b)| format!("[{n}x] {b}")).collect();
        panic!(
            "{} fuzz violation(s), {} kind(s) (one example each):\n  {}",
            bad.len(),
            kinds.len(),
            lines.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// A real daemon over its unix socket (root)
// ---------------------------------------------------------------------------

// Small copies of tests/common (which this file must not change).

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the daemon, which loads BPF programs: run it as root (make test)"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A `sluice run` child with its own socket, state and pin directory,
/// killed and unpinned on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    pins: PathBuf,
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl Daemon {
    fn start(config: &str) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        let cfg = state.path().join("sluice.toml");
        std::fs::write(&cfg, config).unwrap();
        let socket = state.path().join("sluice.sock");
        let log = state.path().join("daemon.log");
        let pins = PathBuf::from(format!("/sys/fs/bpf/sluice-test-hostile-{}", std::process::id()));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state.path())
            .arg("--pin-dir")
            .arg(&pins)
            .args(["--iface", "sluice-hostile-none*", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn sluice run");
        let mut d = Daemon {
            child,
            socket,
            pins,
            log,
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(r)) = exchange(
                &d.socket,
                &http_request("GET", "/v1/status", NO_CT, b""),
                Duration::from_secs(5),
                false,
            ) {
                if r.status == 200 {
                    return d;
                }
            }
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("daemon exited with {st}; log:\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = sluice::dataplane::teardown(&self.pins);
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", self.log_text());
        }
    }
}

fn http_request(method: &str, path: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let ct = if ctype.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {ctype}\r\n")
    };
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Sends `raw` (from a second thread, so a server that answers before
/// reading everything is seen) and reads the response. Ok(None): nothing
/// came back before `timeout` or the connection was closed without a
/// response. With `keep_open` the write side stays open after `raw`.
fn exchange(socket: &Path, raw: &[u8], timeout: Duration, keep_open: bool) -> Result<Option<Resp>, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut w = s.try_clone().unwrap();
    let raw = raw.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&raw);
        if keep_open {
            std::thread::sleep(Duration::from_secs(30));
        }
        drop(w);
    });
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_response(&buf) {
                    if keep_open {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        return Ok(Some(r));
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("read: {e}")),
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    if !keep_open {
        let _ = writer.join();
    }
    Ok(parse_response(&buf))
}

/// A complete HTTP/1.x response in `buf` (Content-Length or chunked).
fn parse_response(buf: &[u8]) -> Option<Resp> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let rest = &buf[end + 4..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut p = rest;
        loop {
            let nl = p.windows(2).position(|w| w == b"\r\n")?;
            let n = usize::from_str_radix(String::from_utf8_lossy(&p[..nl]).trim(), 16).ok()?;
            if n == 0 {
                break out;
            }
            let data = p.get(nl + 2..nl + 2 + n)?;
            out.extend_from_slice(data);
            p = p.get(nl + 4 + n..)?;
        }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Resp {
        status,
        ctype: header("content-type").unwrap_or_default(),
        body,
    })
}

/// Raw HTTP abuse: (what, bytes, wanted status, JSON error required,
/// keep the write side open). `None` as the status: the server may also
/// just close the connection (the HTTP parser refuses before the API
/// sees anything, so there is no JSON to give).
type RawRow = (&'static str, Vec<u8>, Option<Want>, bool, bool);

#[rustfmt::skip]
fn raw_rows() -> Vec<RawRow> {
    let big = |n: usize| format!("{{\"comment\":\"{}\"}}", "a".repeat(n));
    let mut chunked = b"POST /v1/deny HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 65536, "a".repeat(65536)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = |extra: &str, body: &str| {
        format!("POST /v1/deny HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}\r\n{body}").into_bytes()
    };
    vec![
        ("a 2 MiB body with an honest Content-Length", http_request("POST", "/v1/deny", J, big(2 << 20).as_bytes()), Some(Code(413)), true, false),
        ("a 2.5 MiB chunked body", chunked, Some(Code(413)), true, false),
        ("Content-Length of 10 GiB, 4 KiB sent, then silence (must be refused up front, not awaited)", head("Content-Length: 10737418240\r\n", &"a".repeat(4096)), Some(Code(413)), true, true),
        ("Content-Length: -1", head("Content-Length: -1\r\n", "{}"), None, false, false),
        ("Content-Length: abc", head("Content-Length: abc\r\n", "{}"), None, false, false),
        ("two different Content-Lengths", head("Content-Length: 2\r\nContent-Length: 3\r\n", "{}x"), None, false, false),
        ("Content-Length and chunked", head("Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"), None, false, false),
        ("Transfer-Encoding: bogus", head("Transfer-Encoding: bogus\r\n", "{}"), None, false, false),
        ("a TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x01\x02\x03\r\n\r\n".to_vec(), None, false, false),
        ("binary garbage", (0..=255u8).cycle().take(4096).collect(), None, false, false),
        ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), None, false, false),
        ("HTTP/9.9", b"GET /v1/status HTTP/9.9\r\nHost: s\r\n\r\n".to_vec(), None, false, false),
        ("raw non-UTF-8 bytes in the path", b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".to_vec(), None, false, false),
        ("raw non-UTF-8 bytes in a query", b"DELETE /v1/deny?cidr=\xff\xfe HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".to_vec(), None, false, false),
        ("a NUL in the request line", b"GET /v1/status\0 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".to_vec(), None, false, false),
        ("a NUL in a header", b"GET /v1/status HTTP/1.1\r\nHost: s\0x\r\nConnection: close\r\n\r\n".to_vec(), None, false, false),
        ("an obs-fold header", b"GET /v1/status HTTP/1.1\r\nHost: s\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n".to_vec(), None, false, false),
        ("a 1 MiB header", format!("GET /v1/status HTTP/1.1\r\nHost: s\r\nX-A: {}\r\nConnection: close\r\n\r\n", "a".repeat(1 << 20)) .into_bytes(), None, false, false),
        ("500 headers", format!("GET /v1/status HTTP/1.1\r\nHost: s\r\n{}Connection: close\r\n\r\n", (0..500).map(|i| format!("X-{i}: v\r\n")).collect::<String>()) .into_bytes(), None, false, false),
        ("a 1 MiB request line", format!("GET /v1/{} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n", "a".repeat(1 << 20)) .into_bytes(), None, false, false),
        ("a percent-encoded non-UTF-8 id", http_request("DELETE", "/v1/deny/%FF%FE", NO_CT, b""), Some(Code(400)), true, false),
        ("a percent-encoded non-UTF-8 CIDR", http_request("DELETE", "/v1/deny?cidr=%FF%FE", NO_CT, b""), Some(Code(400)), true, false),
        ("a percent-encoded NUL route", http_request("GET", "/v1/status%00", NO_CT, b""), Some(Code(404)), true, false),
        ("an unknown method", http_request("BREW", "/v1/status", NO_CT, b""), Some(Code(405)), true, false),
    ]
}

/// Checks one raw exchange; panics if the daemon died.
fn check_raw(bad: &mut Vec<String>, d: &mut Daemon, what: &str, r: Option<Resp>, want: Option<Want>, json: bool) {
    let fail = |why: String| format!("{what}\n      -> {why}");
    match (&r, want) {
        (None, None) => {}
        (None, Some(_)) => bad.push(fail("no response (closed, or nothing within the timeout)".into())),
        (Some(r), w) => {
            let shown = format!(
                "{} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
            );
            let ok = match w {
                Some(Code(n)) => r.status == n,
                Some(Any2xx) => (200..300).contains(&r.status),
                _ => (400..500).contains(&r.status),
            };
            if !ok {
                bad.push(fail(format!("want {:?}, got {shown}", w.unwrap_or(Any4xx))));
            }
            if json {
                if let Some(p) = error_body_problem(r) {
                    bad.push(fail(p));
                }
            }
        }
    }
    if !d.alive() {
        panic!("the daemon died after: {what}\n{}", d.log_text());
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_real_daemon_refuses_hostile_http_on_its_socket() {
    require_root();
    let start = Instant::now();
    // A small request budget so the flood below gets 429s quickly
    // (the defaults are 500/s and a burst of 1000).
    // max_rules as in-process, so the "more than the table holds" rows mean
    // the same.
    let mut d = Daemon::start("api_rate_per_sec = 200\napi_burst = 400\nmax_rules = 1000\n");
    let sock = d.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Socket(sock.clone());
    let seed = rt.block_on(seed(&t));
    let mut bad = Vec::new();

    eprintln!("  [{:.1?}] phase 1. A sample", start.elapsed());
    // 1. A sample of the in-process table, over the socket: the real
    //    stack (kernel maps, SQLite, the L7 store) must agree with it.
    let cases: Vec<Case> = all_cases(&seed).into_iter().step_by(6).collect();
    // (run_cases compares the state before and after the sample itself.)
    let (table_bad, per_route) = rt.block_on(run_cases(&t, &cases, false));
    let sample = cases.len();
    bad.extend(table_bad);
    let before = rt.block_on(snapshot(&t)).unwrap();

    eprintln!("  [{:.1?}] phase 2. Raw HTTP", start.elapsed());
    // 2. Raw HTTP abuse, one connection each.
    for (what, raw, want, json, keep_open) in raw_rows() {
        let t0 = Instant::now();
        let r = exchange(&sock, &raw, Duration::from_secs(3), keep_open).unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!(
            "  raw: {what}: {} in {:.0?}",
            r.as_ref().map_or("no response".to_string(), |r| r.status.to_string()),
            t0.elapsed()
        );
        check_raw(&mut bad, &mut d, what, r, want, json);
    }

    eprintln!("  [{:.1?}] phase 3. Slow and idle", start.elapsed());
    // 3. Slow and idle clients do not hold up anyone else: 50 idle
    //    connections, 50 with half a request, and one writing a request a
    //    byte every 20 ms, while 20 ordinary requests are answered.
    let idle: Vec<UnixStream> = (0..50).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    let half: Vec<UnixStream> = (0..50)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(b"POST /v1/deny HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Len")
                .unwrap();
            s
        })
        .collect();
    let slow_sock = sock.clone();
    let slow = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&slow_sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for b in b"GET /v1/status HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_response(&out).map(|r| r.status)
    });
    for i in 0..20 {
        let t0 = Instant::now();
        let r = exchange(
            &sock,
            &http_request("GET", "/v1/deny", NO_CT, b""),
            Duration::from_secs(2),
            false,
        )
        .unwrap();
        match r {
            Some(r) if r.status == 200 && t0.elapsed() < Duration::from_secs(2) => {}
            other => bad.push(format!(
                "ordinary request {i} beside slow clients: {:?}",
                other.map(|r| r.status)
            )),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if slow.join().unwrap() != Some(200) {
        bad.push("a request written a byte every 20 ms was not answered".into());
    }
    drop(idle);
    drop(half);
    check_raw(&mut bad, &mut d, "slow and idle clients", None, None, false);

    eprintln!("  [{:.1?}] phase 4. Nothing changed", start.elapsed());
    // 4. Nothing changed by the raw requests and the slow clients.
    match rt.block_on(snapshot(&t)) {
        Ok(after) if after != before => bad.push(format!("STATE CHANGED by raw HTTP: {}", diff(&before, &after))),
        Ok(_) => {}
        Err(e) => bad.push(format!("the final snapshot failed: {e}")),
    }

    eprintln!("  [{:.1?}] phase 5. A flood", start.elapsed());
    // 5. A flood over the request rate gets 429s (JSON errors) and the
    //    bucket refills.
    let limited = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (sock, limited, sent) = (sock.clone(), limited.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut bodies = Vec::new();
                while sent.fetch_add(1, Ordering::Relaxed) < 3000 && limited.load(Ordering::Relaxed) < 100 {
                    if let Ok(Some(r)) = exchange(
                        &sock,
                        &http_request("GET", "/v1/conns", NO_CT, b""),
                        Duration::from_secs(5),
                        false,
                    ) {
                        if r.status == 429 {
                            limited.fetch_add(1, Ordering::Relaxed);
                            bodies.push(r);
                        }
                    }
                }
                bodies
            })
        })
        .collect();
    let refused: Vec<Resp> = flood.into_iter().flat_map(|h| h.join().unwrap()).collect();
    eprintln!(
        "  flood: {} sent, {} got 429",
        sent.load(Ordering::Relaxed).min(3000),
        refused.len()
    );
    if refused.is_empty() {
        bad.push("a flood over api_rate_per_sec got no 429".into());
    }
    for r in refused.iter().take(5) {
        if let Some(p) = error_body_problem(r) {
            bad.push(format!("429: {p}"));
        } else if !error_message(r).contains("too many") {
            bad.push(format!("429 body: {}", error_message(r)));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let r = exchange(
        &sock,
        &http_request("GET", "/v1/status", NO_CT, b""),
        Duration::from_secs(5),
        false,
    )
    .unwrap();
    if r.as_ref().map(|r| r.status) != Some(200) {
        bad.push(format!(
            "after the flood the bucket did not refill: {:?}",
            r.map(|r| r.status)
        ));
    }
    assert!(d.alive(), "the daemon died; log:\n{}", d.log_text());
    let log = d.log_text();
    if log.contains("panicked") {
        bad.push(format!("the daemon log has a panic:\n{log}"));
    }
    report(
        &format!(
            "daemon: {sample} table rows + {} raw rows + slow clients + flood",
            raw_rows().len()
        ),
        &bad,
        &per_route,
        sample,
        start.elapsed(),
    );
}
