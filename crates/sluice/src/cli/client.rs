//! The CLI's HTTP client: one request per call over the daemon's unix socket,
//! with the API's own types. A missing daemon and every API error become one
//! clear line.

use std::path::{Path, PathBuf};

use crate::api::types::ErrorBody;
use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;

pub struct Client {
    socket: PathBuf,
}

/// The daemon closed the connection before it answered (it stopped or
/// died mid-request).
#[derive(Debug, thiserror::Error)]
#[error("the daemon closed the connection before it answered")]
pub struct ConnectionLost;

/// Nothing listens on the socket (it is missing, or a daemon killed with
/// -9 left it behind).
#[derive(Debug, thiserror::Error)]
#[error("the sluice daemon is not running (cannot connect to {socket}: {source}); start it with `sluice run` (or `make run`)")]
pub struct NotRunning {
    socket: String,
    source: std::io::Error,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// POSTs a text/plain body.
    pub async fn post_text<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T> {
        self.send(Method::POST, path, "text/plain", Bytes::from(body)).await
    }

    /// Opens an HTTP/1 connection over the unix socket; a missing daemon is
    /// one clear line saying how to start it.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow!(
                "permission denied on {}: the API socket is root-only (mode 0600); run sluice as root",
                self.socket.display()
            ),
            _ => anyhow::Error::new(NotRunning {
                socket: self.socket.display().to_string(),
                source: e,
            }),
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Follows a Server-Sent Events stream, calling `f(event, data)` for each
    /// event until the daemon closes it (or the process is interrupted).
    pub async fn follow(&self, path: &str, mut f: impl FnMut(&str, &str) -> Result<()>) -> Result<()> {
        let mut sender = self.connect().await?;
        let req = Request::builder()
            .uri(path)
            .header("host", "sluice")
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await.context("talking to the sluice daemon")?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("daemon answered {status}"),
            }
        }
        // Bytes until a whole block is in: a UTF-8 character may straddle frames.
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the event stream")?;
            let Some(chunk) = frame.data_ref() else { continue };
            buf.extend_from_slice(chunk);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&raw);
                let (mut event, mut data) = ("message", String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = if v.trim() == "lost" { "lost" } else { "event" };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    f(event, &data)?;
                }
            }
        }
        Ok(())
    }

    async fn call<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T> {
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        self.send(method, path, "application/json", body).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<T> {
        let mut sender = self.connect().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "sluice")
            .header("content-type", content_type)
            .body(Full::new(body))?;
        let lost = |e: hyper::Error| {
            if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                anyhow::Error::new(ConnectionLost)
            } else {
                anyhow::Error::new(e).context("talking to the sluice daemon")
            }
        };
        let resp = sender.send_request(req).await.map_err(lost)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(lost)?.to_bytes();
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("daemon answered {status}: {}", String::from_utf8_lossy(&bytes).trim()),
            }
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the daemon's answer to {path}"))
    }
}
