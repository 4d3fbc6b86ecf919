//! Probing gateways from outside with real requests: the HTTP client, one request's answer
//! (status and the error code of the gateway's JSON body), and the polls the propagation
//! measurements are made of: until a gateway serves a credential, until it refuses it, one
//! concurrent round over all gateways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinSet;

/// The client probes are sent with (bodiless requests).
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How long one gateway may take to serve or to refuse before the run is declared broken.
pub const GIVE_UP: Duration = Duration::from_secs(10);

/// A pooled HTTP/1.1 client with `TCP_NODELAY`, for request bodies of type `B`.
pub fn client<B>() -> Client<HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// What a gateway answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `error.code` of the JSON body the gateway writes when it refuses; `None` on 200 or for
    /// a body that is not one.
    pub code: Option<String>,
}

impl Answer {
    /// Whether this is the refusal `status` with `code`.
    pub fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && self.code.as_deref() == Some(code)
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} {code}", self.status),
            None => write!(f, "{}", self.status),
        }
    }
}

/// GET `url` with `Authorization: Bearer <credential>` (an API key or a session token).
pub async fn answer(client: &HttpClient, url: &str, credential: &str) -> Result<Answer, String> {
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {credential}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    let code = if status == 200 {
        None
    } else {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_owned))
    };
    Ok(Answer { status, code })
}

/// Polls `url` until it answers 200 for `credential`.
pub async fn until_served(client: &HttpClient, url: &str, credential: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let answered = answer(client, url, credential).await?;
        if answered.status == 200 {
            return Ok(());
        }
        if start.elapsed() > GIVE_UP {
            return Err(format!(
                "{url} never served a new credential (last answer: {answered})"
            ));
        }
    }
}

/// Polls `url` until it stops answering 200 for `credential`; returns the time since `since`
/// and the refusal.
pub async fn until_refused(
    client: HttpClient,
    url: String,
    credential: Arc<str>,
    since: Instant,
) -> Result<(Duration, Answer), String> {
    loop {
        let answered = answer(&client, &url, &credential).await?;
        if answered.status != 200 {
            return Ok((since.elapsed(), answered));
        }
        if since.elapsed() > GIVE_UP {
            return Err(format!(
                "{url} still serves a revoked credential after {GIVE_UP:?}"
            ));
        }
    }
}

/// Probes every gateway concurrently until each refuses `credential`; returns the time from
/// `since` until the last one refused, and every gateway's refusal.
pub async fn until_refused_everywhere(
    client: &HttpClient,
    gateways: &[String],
    credential: &str,
    since: Instant,
) -> Result<(Duration, Vec<Answer>), String> {
    let credential: Arc<str> = Arc::from(credential);
    let mut probes = JoinSet::new();
    for url in gateways {
        probes.spawn(until_refused(
            client.clone(),
            url.clone(),
            Arc::clone(&credential),
            since,
        ));
    }
    let mut slowest = Duration::ZERO;
    let mut refusals = Vec::with_capacity(gateways.len());
    while let Some(probe) = probes.join_next().await {
        let (elapsed, refusal) = probe.map_err(|e| e.to_string())??;
        slowest = slowest.max(elapsed);
        refusals.push(refusal);
    }
    Ok((slowest, refusals))
}

/// One round of concurrent requests with `credential` to every gateway, all expected to be
/// served: what the probing itself costs, the floor of any "refused everywhere" figure.
pub async fn probe_round(
    client: &HttpClient,
    gateways: &[String],
    credential: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut probes = JoinSet::new();
    for url in gateways {
        let (client, url, credential) = (client.clone(), url.clone(), credential.to_owned());
        probes.spawn(async move { answer(&client, &url, &credential).await });
    }
    while let Some(probe) = probes.join_next().await {
        let answered = probe.map_err(|e| e.to_string())??;
        if answered.status != 200 {
            return Err(format!(
                "a gateway refused a served credential during the baseline round: {answered}"
            ));
        }
    }
    Ok(start.elapsed())
}
