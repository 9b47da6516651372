//! Guards in front of the API: a request-rate limit shared by every
//! listener (excess requests get 429), and, on the optional TCP listener, a
//! bearer token read from a file (missing or wrong tokens get 401; the
//! scheme is matched in any case) and a `Host` header that must name the
//! listener itself (anything else gets 421: a web page a browser fetched
//! from some other name, as in DNS rebinding, never reaches the API). The
//! token is compared in constant time and never logged.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::ApiError;

/// A token bucket over all requests.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32) -> Arc<Self> {
        Arc::new(RateLimit {
            rate: per_sec as f64,
            burst: burst as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        })
    }

    /// Takes one token; false when the bucket is empty.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What one listener requires.
#[derive(Clone)]
pub struct Guard {
    pub limit: Arc<RateLimit>,
    /// Required bearer token (TCP listener); None on the unix socket.
    pub token: Option<Arc<str>>,
    /// `Host` values that name this listener (TCP); None on the unix socket.
    pub hosts: Option<Arc<[String]>>,
}

/// The `Host` values that name a TCP listener: its address and port, and
/// for a loopback address also `localhost`, all lowercase.
pub fn listener_hosts(addr: std::net::SocketAddr) -> Arc<[String]> {
    let mut v = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        v.push(format!("localhost:{}", addr.port()));
    }
    v.into()
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Constant time in the contents (the length is not secret).
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if let Some(hosts) = &g.hosts {
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(|h| hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h.trim()))) {
            return ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "the Host header must name this listener ({}); got {:?}",
                    hosts.join(" or "),
                    host.unwrap_or("none")
                ),
            )
            .into_response();
        }
    }
    if let Some(token) = &g.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        if !given.is_some_and(|t| same(t.as_bytes(), token.as_bytes())) {
            let mut r = ApiError(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer TOKEN)".into(),
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    if !g.limit.allow() {
        return ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many API requests; slow down (api_rate_per_sec in the config)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("token file {0} is readable by group or others (mode {1:o}); chmod 600 it")]
    Mode(String, u32),
    #[error("token file {0} must hold a token of at least 16 characters")]
    Short(String),
}

/// Reads a bearer token from a file that only its owner can read.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| TokenError::Read(name.clone(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Mode(name, mode));
    }
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Read(name.clone(), e))?;
    let token = text.trim();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenError::Short(name));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let l = RateLimit::new(10, 5);
        assert_eq!((0..10).filter(|_| l.allow()).count(), 5, "the burst");
        std::thread::sleep(std::time::Duration::from_millis(250));
        let n = (0..10).filter(|_| l.allow()).count();
        assert!((2..=3).contains(&n), "about 2.5 tokens refilled, got {n}");
    }

    #[test]
    fn bearer_scheme_in_any_case_and_hosts_of_a_listener() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
        let h = listener_hosts("127.0.0.1:7780".parse().unwrap());
        assert_eq!(&*h, ["127.0.0.1:7780", "localhost:7780"]);
        let h = listener_hosts("[::1]:7780".parse().unwrap());
        assert_eq!(&*h, ["[::1]:7780", "localhost:7780"]);
        let h = listener_hosts("198.18.0.1:7780".parse().unwrap());
        assert_eq!(&*h, ["198.18.0.1:7780"]);
    }

    #[test]
    fn tokens_compare_exactly_and_files_are_checked() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_token(&p), Err(TokenError::Mode(_, 0o644))));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&p).unwrap(), "0123456789abcdef");
        std::fs::write(&p, "short").unwrap();
        assert!(matches!(read_token(&p), Err(TokenError::Short(_))));
        assert!(matches!(
            read_token(&dir.path().join("none")),
            Err(TokenError::Read(..))
        ));
    }
}
