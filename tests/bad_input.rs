//! Bad input at every door: malformed keys, huge and non-UTF-8 headers, garbage on the gRPC
//! port, an upstream that hangs up, broken config files and wrong tokens. Each gets its clear
//! error, and the servers keep serving.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use keygate_proto::{ApiKey, KeyPrefix, pb};
use support::{Cluster, get_with_key, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_wrong_checksum_keys_are_malformed() {
    let cluster = Cluster::start(1).await;
    let url = cluster.gateways[0].url("/");
    let good = ApiKey::generate(&KeyPrefix::default());
    let mut wrong_checksum = good.clone().into_bytes();
    let last = wrong_checksum.len() - 1;
    wrong_checksum[last] = if wrong_checksum[last] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let wrong_checksum = String::from_utf8(wrong_checksum).unwrap();
    let cases = [
        "x".to_owned(),
        good[..good.len() - 3].to_owned(),
        wrong_checksum,
        format!("{good}extra"),
        "kg_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!".to_owned(),
        "a".repeat(5000),
    ];
    for bad in &cases {
        let reply = get_with_key(&url, bad).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "MALFORMED"),
            "{bad:.40}"
        );
        assert!(
            reply.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "401 without WWW-Authenticate"
        );
    }
    // An unknown well-formed key is not malformed.
    assert_eq!(get_with_key(&url, &good).await.code(), "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_non_utf8_headers_are_refused_cleanly() {
    let cluster = Cluster::start(1).await;
    let issued = cluster.create_key("alice").await;
    let url = cluster.gateways[0].url("/");

    let huge = vec![b'a'; 100 * 1024];
    let reply = send("GET", &url, &[("x-padding", &huge)], b"").await;
    assert_eq!(reply.status, 431);

    let reply = send("GET", &url, &[("x-api-key", b"kg_\xff\xfe\xfd")], b"").await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "MALFORMED"));

    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(b"\xc3\x28\xa0\xa1");
    let reply = send("GET", &url, &[("authorization", &bearer)], b"").await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "MALFORMED"));

    // Still serving.
    assert_eq!(get_with_key(&url, &issued.key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_and_bad_grpc_arguments_get_clear_errors() {
    let cluster = Cluster::start(1).await;

    // Raw garbage, then an HTTP/2 preface followed by garbage frames.
    for payload in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        let mut stream = TcpStream::connect(cluster.grpc_addr).await.unwrap();
        stream.write_all(payload).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(support::DEADLINE, stream.read_to_end(&mut sink)).await;
    }

    let mut admin = cluster.admin().await;
    for key_id in ["", "key_", "not-a-key", &"x".repeat(10_000)] {
        let status = admin
            .get_key(pb::GetKeyRequest {
                key_id: key_id.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{key_id:.20}");
    }
    let status = admin
        .create_key(pb::CreateKeyRequest {
            owner: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = admin
        .create_key(pb::CreateKeyRequest {
            owner: "o".into(),
            prefix: "bad_prefix!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // The control plane still works.
    let issued = cluster.create_key("alice").await;
    assert_eq!(
        get_with_key(&cluster.gateways[0].url("/"), &issued.key)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_drops_the_connection_is_a_502() {
    let mut cluster = Cluster::start(0).await;
    let dropper = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dropper_addr = dropper.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = dropper.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let mut config = cluster.gateway_config(0);
    config.routes[0].upstream = format!("http://{dropper_addr}");
    cluster.add_gateway_with(config).await;
    let issued = cluster.create_key("alice").await;
    let reply = get_with_key(&cluster.gateways[0].url("/"), &issued.key).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (502, "UPSTREAM_UNAVAILABLE")
    );
    // The gateway survives and still answers.
    assert_eq!(
        send("GET", &cluster.gateways[0].url("/"), &[], b"")
            .await
            .code(),
        "MISSING"
    );
}

fn keygate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
}

#[test]
fn a_config_file_with_a_typo_is_refused_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nupstreem = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let output = keygate()
        .args(["proxy", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("upstreem") && stderr.contains("line 2"),
        "{stderr}"
    );

    std::fs::write(&path, "grpc_listen = 42\n").unwrap();
    let output = keygate()
        .args(["control-plane", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("grpc_listen"));

    let output = keygate()
        .args(["proxy", "--config", "/nonexistent/keygate.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[test]
fn a_serving_thread_count_out_of_range_is_refused_naming_it() {
    let gateway = |workers: &str, from_env: bool| {
        let mut command = keygate();
        command.args([
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--control-plane",
            "http://127.0.0.1:9",
            "--gateway-token",
            "t",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        if from_env {
            command.env("KEYGATE_WORKERS", workers);
        } else {
            command.args(["--workers", workers]);
        }
        command.output().unwrap()
    };
    for (workers, from_env) in [("0", false), ("1025", true)] {
        let output = gateway(workers, from_env);
        assert_eq!(output.status.code(), Some(78), "workers {workers}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("workers") && stderr.contains(workers),
            "{stderr}"
        );
    }
}

#[test]
fn a_bad_trusted_proxy_range_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control-plane.toml");
    std::fs::write(
        &path,
        "trusted_proxies = [\"10.0.0.0/8\", \"10.1.2.3/16\"]\n",
    )
    .unwrap();
    let output = keygate()
        .args(["control-plane", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("\"10.1.2.3/16\" has bits set past its prefix; did you mean 10.1.0.0/16?"),
        "{stderr}"
    );

    // The flag and the environment are parsed by the command line: a usage error (2).
    let output = keygate()
        .args([
            "control-plane",
            "--trusted-proxies",
            "10.0.0.0/8,10.0.0.0/33",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--trusted-proxies"), "{stderr}");
    assert!(stderr.contains("at most 32"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_one_json_object_and_refuses_a_wrong_token_in_one_line() {
    let cluster = Cluster::start(0).await;
    let endpoint = format!("http://{}", cluster.grpc_addr);
    let token = cluster.admin_token.clone();
    let run = move |args: Vec<String>, token: String| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            keygate()
                .args(&args)
                .env("KEYGATE_ENDPOINT", &endpoint)
                .env("KEYGATE_TOKEN", &token)
                .env_remove("KEYGATE_LOG")
                .output()
                .unwrap()
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let out = run(
        args(&[
            "keys",
            "create",
            "--owner",
            "gina",
            "--meta",
            "plan=pro",
            "--expires",
            "30d",
            "--json",
        ]),
        token.clone(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = created["keyId"].as_str().unwrap().to_owned();
    assert!(created["key"].as_str().unwrap().starts_with("kg_"));
    assert!(created["revision"].as_u64().unwrap() > 0);

    let out = run(
        args(&["keys", "list", "--owner", "gina", "--json"]),
        token.clone(),
    )
    .await
    .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["keys"][0]["keyId"], key_id.as_str());
    assert_eq!(listed["keys"][0]["meta"]["plan"], "pro");
    assert!(listed["keys"][0]["expires"].is_string());
    assert!(listed["cursor"].is_null());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(created["key"].as_str().unwrap()));

    let out = run(args(&["keys", "disable", &key_id, "--json"]), token.clone())
        .await
        .unwrap();
    assert!(out.status.success());
    let disabled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(disabled["revision"].as_u64().unwrap() > created["revision"].as_u64().unwrap());

    let out = run(
        args(&["keys", "get", "key_0000000000000000000000"]),
        token.clone(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );

    let out = run(args(&["keys", "list"]), "wrong-token-wrong-token".into())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");

    let out = run(
        args(&["keys", "create", "--owner", "x", "--expires", "someday"]),
        token,
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires"));
}
