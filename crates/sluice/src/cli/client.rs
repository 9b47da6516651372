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

    /// Opens an HTTP/1 connection over the unix socket; a missing daemon is
    /// one clear line saying how to start it.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            anyhow!(
                "the sluice daemon is not running (cannot connect to {}: {e}); start it with `sluice run` (or `make run`)",
                self.socket.display()
            )
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
        let mut sender = self.connect().await?;
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "sluice")
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await.context("talking to the sluice daemon")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("daemon answered {status}: {}", String::from_utf8_lossy(&bytes).trim()),
            }
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the daemon's answer to {path}"))
    }
}
