//! A small loopback HTTP endpoint for Prometheus: `GET /metrics` and
//! `GET /health` (as etcd serves them on its metrics listener).

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tugboat_store::EtcdServer;

/// Largest request head accepted; metrics requests are tiny.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves metrics until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    server: Arc<EtcdServer>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving metrics (http, loopback)");
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            accepted = listener.accept() => {
                let (conn, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        continue;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(conn, &server)).await;
                });
            }
        }
    }
}

async fn answer(mut conn: TcpStream, server: &EtcdServer) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = server.render_metrics();
            respond(&mut conn, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/health") => {
            let healthy = server.raft.status().leader.is_some();
            let body = format!("{{\"health\":\"{healthy}\"}}\n");
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(&mut conn, status, "application/json", &body).await
        }
        ("GET", _) => respond(&mut conn, "404 Not Found", "text/plain", "not found\n").await,
        _ => {
            respond(
                &mut conn,
                "405 Method Not Allowed",
                "text/plain",
                "method not allowed\n",
            )
            .await
        }
    }
}

async fn respond(
    conn: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}
