//! Propagation of a disable, probed from outside: the time from `SetKeyEnabled(false)`
//! returning to every gateway answering 403 DISABLED to real requests, over many tries.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_proto::pb;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

async fn status_of(client: &HttpClient, url: &str, key: Option<&str>) -> Result<u16, String> {
    let mut request = http::Request::get(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Polls every gateway until each answers `status` for `key`; returns when the last one does.
async fn until_all(
    client: &HttpClient,
    gateways: &[String],
    key: &str,
    status: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: Vec<&String> = gateways.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for gateway in pending {
            if status_of(client, gateway, Some(key)).await? != status {
                still.push(gateway);
            }
        }
        pending = still;
        if Instant::now() > deadline {
            return Err(format!(
                "gateways {pending:?} did not answer {status} within 10 s"
            ));
        }
    }
    Ok(())
}

/// Enables, waits for 200 everywhere, disables, and times until 403 everywhere; `tries` times.
pub async fn run(
    gateways: &[String],
    endpoint: &str,
    token: &str,
    tries: usize,
) -> Result<(), String> {
    let mut admin = keygate::admin_client::connect(endpoint, Some(token), None)
        .await
        .map_err(|e| e.to_string())?;
    let http = client();
    let issued = admin
        .create_key(pb::CreateKeyRequest {
            owner: "bench".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut samples = Vec::with_capacity(tries);
    for _ in 0..tries {
        admin
            .set_key_enabled(pb::SetKeyEnabledRequest {
                key_id: issued.key_id.clone(),
                enabled: true,
            })
            .await
            .map_err(|e| e.to_string())?;
        until_all(&http, gateways, &issued.key, 200).await?;
        admin
            .set_key_enabled(pb::SetKeyEnabledRequest {
                key_id: issued.key_id.clone(),
                enabled: false,
            })
            .await
            .map_err(|e| e.to_string())?;
        let returned = Instant::now();
        until_all(&http, gateways, &issued.key, 403).await?;
        samples.push(returned.elapsed());
    }
    admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: issued.key_id,
        })
        .await
        .map_err(|e| e.to_string())?;
    let summary = percentiles(&mut samples);
    println!(
        "disable -> 403 DISABLED at all {} gateways, {tries} tries: p50 {} p90 {} p99 {} max {}",
        gateways.len(),
        ms(summary[0]),
        ms(summary[1]),
        ms(summary[2]),
        ms(summary[3])
    );
    Ok(())
}

/// p50, p90, p99, max.
fn percentiles(samples: &mut [Duration]) -> [Duration; 4] {
    if samples.is_empty() {
        return [Duration::ZERO; 4];
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.9), at(0.99), samples[samples.len() - 1]]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
