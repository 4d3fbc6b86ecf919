//! CI smoke of the load generator's TLS client, timing nothing: an in-process HTTPS server
//! (tokio-rustls + hyper, a P-256 certificate from a CA made here with rcgen, session tickets
//! offered) on 127.0.0.1:0; the generator must speak TLS 1.3 with ALPN http/1.1, keep its
//! connections alive unless told to open one per request, never resume a session, and refuse a
//! certificate that is not for the name it was given.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keygate_benches::load::{self, LoadSpec, Pace};
use keygate_benches::mix::KeyMix;
use keygate_benches::report::LoadReport;
use keygate_benches::tls::{TlsOptions, Verification};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

struct Server {
    addr: std::net::SocketAddr,
    /// TLS handshakes the server completed.
    accepted: Arc<AtomicU64>,
    ca_file: tempfile::NamedTempFile,
}

/// A CA and a leaf for localhost/127.0.0.1, both ECDSA P-256; serves 200 "ok" over HTTPS.
async fn server() -> Server {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Tickets are offered, as keygate and nginx do; the client must not use them.
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        accepted,
        ca_file,
    }
}

fn spec(server: &Server, fresh: bool, tls: TlsOptions) -> LoadSpec {
    LoadSpec {
        label: "tls".into(),
        url: format!("https://{}/x", server.addr),
        pace: Pace::Closed,
        connections: 3,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        requests: Some(60),
        cpu_pids: vec![std::process::id()],
        seed: 1,
        tls: Some(tls),
        new_connection_per_request: fresh,
        method: http::Method::GET,
    }
}

fn options(server: &Server, name: Option<&str>, verification: Verification) -> TlsOptions {
    TlsOptions {
        ca_file: server.ca_file.path().to_owned(),
        server_name: name.map(str::to_owned),
        verification,
    }
}

fn all_ok(report: &LoadReport) {
    assert_eq!(report.requests, 60, "{}", report.line());
    assert_eq!(report.errors, 0, "{}", report.line());
    assert_eq!(
        report.codes.get("200").copied(),
        Some(60),
        "{}",
        report.line()
    );
    let tls = report.tls.as_ref().expect("a TLS report");
    assert!(
        tls.description.starts_with("TLSv1_3 ") && tls.description.contains("ALPN http/1.1"),
        "{}",
        tls.description
    );
    assert_eq!(tls.resumed, 0, "{}", report.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_over_tls_keeps_alive_or_handshakes_every_request() {
    let server = server().await;
    let mix = Arc::new(KeyMix::single(Some("kg_none")).unwrap());

    // Keep-alive: one handshake per connection (plus the probe before the run).
    let keep_alive = spec(
        &server,
        false,
        options(&server, Some("localhost"), Verification::OncePerChain),
    );
    let report = load::run(&keep_alive, Arc::clone(&mix)).await.unwrap();
    all_ok(&report);
    assert_eq!(report.connects, 3, "{}", report.line());
    assert_eq!(report.tls.as_ref().unwrap().full, 3);
    assert_eq!(server.accepted.load(Ordering::Relaxed), 4);

    // One request per connection: a full handshake for each, never a resumed one, by IP too.
    for verification in [Verification::OncePerChain, Verification::EveryHandshake] {
        let before = server.accepted.load(Ordering::Relaxed);
        let fresh = spec(&server, true, options(&server, None, verification));
        let report = load::run(&fresh, Arc::clone(&mix)).await.unwrap();
        all_ok(&report);
        assert!(report.new_connection_per_request);
        assert_eq!(report.connects, 60, "{}", report.line());
        let tls = report.tls.as_ref().unwrap();
        assert_eq!(tls.full + tls.full_hello_retry, 60, "{}", report.line());
        assert_eq!(server.accepted.load(Ordering::Relaxed) - before, 61);
    }

    // A name the certificate is not for is refused before the run starts.
    let wrong = spec(
        &server,
        false,
        options(&server, Some("other.example"), Verification::OncePerChain),
    );
    let error = load::run(&wrong, Arc::clone(&mix)).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("TLS handshake failed"),
        "{error:#}"
    );

    // https:// without TLS options, and TLS options for http://, are mistakes.
    let mut no_ca = spec(
        &server,
        false,
        options(&server, None, Verification::OncePerChain),
    );
    no_ca.tls = None;
    assert!(load::run(&no_ca, Arc::clone(&mix)).await.is_err());
    let mut plain = spec(
        &server,
        false,
        options(&server, None, Verification::OncePerChain),
    );
    plain.url = format!("http://{}/x", server.addr);
    assert!(load::run(&plain, mix).await.is_err());
}
