//! The built-in echo upstream of `keygate dev` (and of the tests): answers every request with a
//! JSON description of what reached it, so a user can see exactly which headers the gateway
//! forwarded.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// A bound echo server.
pub struct EchoUpstream {
    listener: TcpListener,
    fixed: bool,
}

impl EchoUpstream {
    /// Binds `addr` (port 0 picks one).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            fixed: false,
        })
    }

    /// Answers every request with the same small body instead of describing it, so that in a
    /// benchmark the upstream does identical work whatever headers a request carries.
    pub fn fixed_response(mut self) -> Self {
        self.fixed = true;
        self
    }

    /// The bound address.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let fixed = self.fixed;
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let _ = if fixed {
                    http1::Builder::new()
                        .serve_connection(io, service_fn(fixed_reply))
                        .await
                } else {
                    http1::Builder::new()
                        .serve_connection(io, service_fn(echo))
                        .await
                };
            });
        }
    }
}

async fn fixed_reply(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the body so the connection can be reused.
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body_bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.clone(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let description = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "bodyBytes": body_bytes,
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
