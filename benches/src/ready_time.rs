//! Time for a freshly started gateway process to become ready: spawns the command, polls its
//! admin `/readyz` every 2 ms until it answers 200, and reports the time since the spawn
//! (process start, sync connect, snapshot transfer, replica build and the first freshness proof).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Spawns `command`, waits for `admin`'s `/readyz`, stops the process; returns the time to
/// ready.
pub async fn measure(
    command: &[String],
    admin: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command to start"))?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let result = loop {
        if started.elapsed() > timeout {
            break Err(anyhow::anyhow!("not ready within {timeout:?}"));
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("the gateway exited early: {status}"));
        }
        if ready(admin).await {
            break Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn ready(admin: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let Ok(request) = http::Request::get("/readyz")
        .header(http::header::HOST, admin.to_string())
        .body(Empty::new())
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status() == http::StatusCode::OK;
            let _ = response.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}
