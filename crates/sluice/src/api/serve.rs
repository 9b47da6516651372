//! Serving the API on a listener (the unix socket, or the optional TCP
//! listener) with the timeouts `axum::serve` lacks: a client must send its
//! request head within [`HEADER_READ_TIMEOUT`], so half-sent requests cannot
//! pile up until the daemon runs out of file descriptors (the body has its
//! own deadline in the JSON extractor). Stopping drains the connections in
//! flight for up to [`DRAIN_TIMEOUT`].

use std::time::Duration;

use axum::{serve::Listener, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};

/// Time a client has to send a request's line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get once the daemon is stopping.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` turns true.
pub async fn serve<L: Listener>(mut listener: L, app: Router, mut stop: tokio::sync::watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (io, _) = tokio::select! {
            c = listener.accept() => c,
            _ = stop.wait_for(|s| *s) => break,
        };
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("API requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}
