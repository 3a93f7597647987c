//! The `--metrics-addr` HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (connected to the broker and the result backend).
//!
//! A deliberately small HTTP/1.1 server: `GET` only, one request per connection, the
//! request head read with a size and time limit, the response closed after writing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head read.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints answer.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// Whether the broker and the result backend can be reached now.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Binds `addr` now (so a taken port fails at start) and serves from a task of its own.
pub async fn serve<E: Endpoints>(
    addr: SocketAddr,
    endpoints: std::sync::Arc<E>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(
        "metrics: serving /metrics, /healthz and /readyz on http://{}",
        listener.local_addr()?
    );
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let endpoints = std::sync::Arc::clone(&endpoints);
                    tokio::spawn(async move {
                        if let Err(err) = answer(stream, &*endpoints).await {
                            tracing::debug!("metrics: connection ended: {err}");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!("metrics: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

/// The method and path of a request head, if it is one.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    Some((method, target.split('?').next().unwrap_or(target)))
}

async fn answer<E: Endpoints>(mut stream: TcpStream, endpoints: &E) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let (status, content_type, body) = match request_line(&head) {
        Some(("GET", "/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            endpoints.metrics(),
        ),
        Some(("GET", "/healthz")) => ("200 OK", "text/plain", "ok\n".to_owned()),
        Some(("GET", "/readyz")) => match endpoints.ready().await {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(reason) => (
                "503 Service Unavailable",
                "text/plain",
                format!("{reason}\n"),
            ),
        },
        Some(("GET", _)) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_gives_method_and_path() {
        assert_eq!(
            request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_line(b"\xff\xfe"), None);
    }
}
