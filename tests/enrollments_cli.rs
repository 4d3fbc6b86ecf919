//! Revocable enrollment links end to end: the operator's `keygate enrollments list|revoke`
//! and `keygate users disable|enable` through the real binary, against a real control plane,
//! and a software authenticator performing real WebAuthn registrations through the passkey
//! API. A revoked link, a link that expires between its begin and its finish, and a link of a
//! disabled user are each refused with their own code, at begin and at finish, and nothing
//! changes: no passkey, no session, the link unused, and `enrollments list` says why.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use keygate_proto::pb;
use serde_json::{Value, json};
use support::cli::Cli;
use support::passkeys::Device;
use support::{Cluster, Reply, eventually};

/// A link as `enrollments create --json` printed it.
struct Link {
    id: String,
    token: String,
}

async fn create_link(cli: &Cli, user: &str, expires: &str) -> Link {
    let created = cli
        .json(&[
            "enrollments",
            "create",
            "--user",
            user,
            "--expires",
            expires,
        ])
        .await;
    let link = created["link"].as_str().unwrap();
    Link {
        id: created["enrollmentId"].as_str().unwrap().to_owned(),
        token: link.split_once("#enroll=").unwrap().1.to_owned(),
    }
}

async fn begin(cluster: &Cluster, link: &Link) -> Reply {
    cluster
        .post_json(
            "/v1/enroll/begin",
            &json!({ "token": link.token, "name": "Laptop" }),
        )
        .await
}

/// Begins an enrollment through `link`, which must be accepted, and lets `device` create its
/// credential; returns the finish request's body (not sent yet).
async fn begin_and_answer(cluster: &Cluster, device: &Device, link: &Link) -> Value {
    let begun = begin(cluster, link).await;
    assert_eq!(
        begun.status,
        200,
        "{}",
        String::from_utf8_lossy(&begun.body)
    );
    finish_body(device, &begun.json()).await
}

async fn finish_body(device: &Device, begun: &Value) -> Value {
    let credential = device.create(&begun["publicKey"]).await;
    json!({ "ceremonyId": begun["ceremonyId"], "credential": credential })
}

/// A refusal with `status` and `code`, and a message a person can act on.
fn assert_refused(reply: &Reply, status: u16, code: &str, says: &str) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (status, code),
        "{body}"
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains(says), "{message}");
}

/// The user's links by id, as `enrollments list --json` prints them.
async fn links_by_id(cli: &Cli, user: &str) -> Vec<(String, Value)> {
    let listed = cli.json(&["enrollments", "list", "--user", user]).await;
    listed["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|link| {
            (
                link["enrollmentId"].as_str().unwrap().to_owned(),
                link.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_voided_links_are_refused_with_their_own_codes_and_change_nothing() {
    let cluster = Cluster::start_configured(
        0,
        Some(Box::new(|config| {
            config.passkey_rate_per_address = 0;
            config.passkey_rate_per_user = 0;
        })),
    )
    .await;
    let cli = Cli::admin(&cluster);
    let device = Device::new(&cluster.passkey_origin());
    cli.json(&["users", "create", "alice"]).await;
    assert_eq!(
        cli.json(&["enrollments", "list", "--user", "alice"]).await,
        json!({ "enrollments": [] })
    );

    // Revoked: one link before its ceremony began (refused at begin), one after (refused at
    // finish, which checks the link again in the transaction that would consume it).
    let revoked_early = create_link(&cli, "alice", "24h").await;
    let revoked_late = create_link(&cli, "alice", "24h").await;
    let late_finish = begin_and_answer(&cluster, &device, &revoked_late).await;
    for link in [&revoked_early, &revoked_late] {
        let revoked = cli.json(&["enrollments", "revoke", &link.id]).await;
        assert_eq!(revoked["changed"], true, "{revoked}");
        let enrollment = &revoked["enrollment"];
        assert_eq!(enrollment["enrollmentId"], link.id.as_str());
        assert_eq!(enrollment["state"], "revoked");
        assert!(enrollment["voided"].is_string(), "{revoked}");
        assert_eq!(enrollment["used"], Value::Null);
    }
    let again = cli
        .json(&["enrollments", "revoke", &revoked_early.id])
        .await;
    assert_eq!(again["changed"], false, "revoking twice is no error");
    assert_eq!(again["enrollment"]["state"], "revoked");
    let refused = begin(&cluster, &revoked_early).await;
    assert_refused(&refused, 410, "ENROLLMENT_REVOKED", "revoked");
    let refused = cluster.post_json("/v1/enroll/finish", &late_finish).await;
    assert_refused(&refused, 410, "ENROLLMENT_REVOKED", "revoked");

    // Expired between begin and finish. The link must outlive its begin, on however busy a
    // machine: a shorter lifetime that did not is tried again longer.
    let mut too_short = Vec::new();
    let (expiring, expired_finish) = {
        let mut found = None;
        for lifetime in ["2s", "4s", "8s"] {
            let link = create_link(&cli, "alice", lifetime).await;
            let begun = begin(&cluster, &link).await;
            if begun.status == 200 {
                let body = finish_body(&device, &begun.json()).await;
                found = Some((link, body));
                break;
            }
            assert_refused(&begun, 410, "ENROLLMENT_EXPIRED", "expired");
            too_short.push(link);
        }
        found.expect("a link that outlived its begin")
    };
    let admin = cluster.admin().await;
    eventually("the link expires", || {
        let mut admin = admin.clone();
        let id = expiring.id.clone();
        async move {
            let listed = admin
                .list_enrollments(pb::ListEnrollmentsRequest {
                    user_id: "alice".into(),
                })
                .await
                .unwrap()
                .into_inner();
            listed
                .enrollments
                .iter()
                .any(|link| link.enrollment_id == id && link.state == "expired")
        }
    })
    .await;
    let refused = cluster
        .post_json("/v1/enroll/finish", &expired_finish)
        .await;
    assert_refused(&refused, 410, "ENROLLMENT_EXPIRED", "expired");

    // A disabled user: a link whose ceremony began before the disable is refused at finish,
    // one not begun yet at begin; enabling the user again revives neither (they were
    // voided), so they are still refused, as USER_DISABLED.
    let begun_then_disabled = create_link(&cli, "alice", "24h").await;
    let disabled_finish = begin_and_answer(&cluster, &device, &begun_then_disabled).await;
    let idle = create_link(&cli, "alice", "24h").await;
    let disabled = cli.json(&["users", "disable", "alice"]).await;
    assert_eq!(disabled["changed"], true);
    let refused = cluster
        .post_json("/v1/enroll/finish", &disabled_finish)
        .await;
    assert_refused(&refused, 403, "USER_DISABLED", "disabled");
    let refused = begin(&cluster, &idle).await;
    assert_refused(&refused, 403, "USER_DISABLED", "disabled");
    cli.json(&["users", "enable", "alice"]).await;
    for link in [&idle, &begun_then_disabled] {
        let refused = begin(&cluster, link).await;
        assert_refused(&refused, 403, "USER_DISABLED", "voided");
    }

    // Nothing changed: no passkey, and the list shows what happened to each link, newest
    // first, never a token.
    let passkeys = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    assert_eq!(passkeys["passkeys"], json!([]));
    let links = links_by_id(&cli, "alice").await;
    let states: BTreeSet<(&str, &str)> = links
        .iter()
        .map(|(id, link)| (id.as_str(), link["state"].as_str().unwrap()))
        .collect();
    let mut expected = BTreeSet::from([
        (idle.id.as_str(), "voided"),
        (begun_then_disabled.id.as_str(), "voided"),
        (expiring.id.as_str(), "expired"),
        (revoked_late.id.as_str(), "revoked"),
        (revoked_early.id.as_str(), "revoked"),
    ]);
    expected.extend(too_short.iter().map(|link| (link.id.as_str(), "expired")));
    let created: Vec<&str> = links
        .iter()
        .map(|(_, link)| link["created"].as_str().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first: {created:?}"
    );
    assert_eq!(states, expected);
    assert_eq!(links.len(), expected.len());
    let fields: BTreeSet<&str> = [
        "enrollmentId",
        "userId",
        "created",
        "expires",
        "state",
        "used",
        "voided",
        "createdBy",
    ]
    .into();
    for (id, link) in &links {
        let keys: BTreeSet<&str> = link
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{link}");
        assert_eq!(link["userId"], "alice");
        assert_eq!(link["createdBy"], "admin");
        assert_eq!(link["used"], Value::Null, "{id} was never used");
        assert!(link["created"].as_str().unwrap().ends_with('Z'), "{link}");
        assert!(link["expires"].is_string(), "{link}");
        let closed = link["state"] != "expired";
        assert_eq!(link["voided"].is_string(), closed, "{link}");
    }
    let human = cli.run(&["enrollments", "list", "--user", "alice"]).await;
    assert!(human.status.success());
    let human = String::from_utf8(human.stdout).unwrap();
    assert_eq!(human.lines().count(), links.len(), "{human}");
    assert!(
        human.contains(&format!("{}  alice  revoked", revoked_early.id)),
        "{human}"
    );

    // The refusals were the links' own: a fresh link enrolls, and then it is used, which a
    // revocation leaves as it is.
    let good = create_link(&cli, "alice", "24h").await;
    let session = cluster.enroll(&device, &good.token, "Laptop").await;
    let used = cli.json(&["enrollments", "revoke", &good.id]).await;
    assert_eq!(used["changed"], false);
    assert_eq!(used["enrollment"]["state"], "used");
    assert!(used["enrollment"]["used"].is_string(), "{used}");
    assert_eq!(used["enrollment"]["voided"], Value::Null);
    let passkeys = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    assert_eq!(
        passkeys["passkeys"][0]["passkeyId"],
        session.passkey_id.as_str()
    );
    assert_eq!(passkeys["passkeys"].as_array().unwrap().len(), 1);

    // Unknown ids and users are refused with one line; a bad id before asking anyone.
    let unknown = cli.fails(&["enrollments", "revoke", "enr_nope"]).await;
    assert!(unknown.contains("not found"), "{unknown}");
    let nobody = cli
        .fails(&["enrollments", "list", "--user", "nobody"])
        .await;
    assert!(nobody.contains("not found"), "{nobody}");
    let long = "x".repeat(100);
    let invalid = cli.fails(&["enrollments", "revoke", &long]).await;
    assert!(invalid.contains("enrollment id"), "{invalid}");

    // Audited: each revocation by the token's name, against the user, naming the link and
    // never its token; the disable names the links it voided.
    let audit = cli.json(&["audit", "list"]).await;
    let entries = audit["entries"].as_array().unwrap();
    let revocations: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["action"] == "enrollment.revoke")
        .collect();
    assert_eq!(revocations.len(), 4, "{revocations:?}");
    for entry in &revocations {
        assert_eq!(
            (entry["actor"].as_str(), entry["target"].as_str()),
            (Some("admin"), Some("alice"))
        );
    }
    let revoked_ids: BTreeSet<&str> = revocations
        .iter()
        .map(|entry| entry["detail"]["enrollmentId"].as_str().unwrap())
        .collect();
    assert_eq!(
        revoked_ids,
        BTreeSet::from([
            revoked_early.id.as_str(),
            revoked_late.id.as_str(),
            good.id.as_str()
        ])
    );
    let disable = entries
        .iter()
        .find(|entry| entry["action"] == "user.disable")
        .unwrap();
    let voided: BTreeSet<&str> = disable["detail"]["voidedEnrollments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(
        voided,
        BTreeSet::from([idle.id.as_str(), begun_then_disabled.id.as_str()])
    );
    let text = audit.to_string();
    for link in [&revoked_early, &revoked_late, &expiring, &idle, &good] {
        assert!(
            !text.contains(&link.token),
            "a link's token is in the audit log"
        );
    }
}
