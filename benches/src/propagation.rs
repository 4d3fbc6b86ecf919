//! Revocation propagation to many gateways, probed from outside (DESIGN.md, "Performance
//! targets": revoke → enforced at all 8 gateways on loopback, p99 ≤ 50 ms over 1,000
//! revocations, while the gateways carry load).
//!
//! For each revocation: mint a credential and wait until every gateway serves it; then revoke
//! it and, from the moment the admin call returns, probe every gateway concurrently with real
//! requests until each refuses it with the expected code. The figure is the time until the last
//! gateway refuses. In the same run, `WaitForRevision` (what `--wait` calls) is issued right
//! after the change, and its duration is recorded from the same instant. Optionally, a steady
//! background load (a valid key, paced requests spread over all gateways) runs throughout.
//!
//! What is revoked is a [`Revoke`]: an API key (alternately disabled and deleted), or a passkey
//! (`RevokePasskey`), enrolled for the purpose with a real WebAuthn ceremony
//! ([`enrollment`](crate::enrollment)), whose session is what the gateways are probed with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keygate::admin_client::AdminClient;
use keygate_proto::pb;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::enrollment::{EnrolledSession, PasskeyApi};
use crate::percentiles::Percentiles;
use crate::probe::{self, Answer};

/// What each revocation revokes.
#[derive(Debug, Clone)]
pub enum Revoke {
    /// An API key, alternately disabled (`SetKeyEnabled(false)`: 403 DISABLED) and deleted
    /// (`DeleteKey`: 401 NOT_FOUND).
    Keys,
    /// A passkey (`RevokePasskey`); the session its enrollment signed in must be refused with
    /// 401 REVOKED. Passkeys are enrolled through the passkey API at `api`, the control
    /// plane's HTTP listener (`http://127.0.0.1:7080`), whose rate limits must be off.
    Passkeys { api: String },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PropagationArgs {
    /// Gateway base URLs (a path on a route that accepts the credential is appended as given).
    pub gateways: Vec<String>,
    pub endpoint: String,
    pub token: String,
    pub revocations: usize,
    /// Background requests per second over all gateways; 0: idle.
    pub load_rps: u64,
    pub revoke: Revoke,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct PropagationReport {
    pub gateways: usize,
    pub revocations: usize,
    pub disables: usize,
    pub deletes: usize,
    pub passkeys: usize,
    /// Admin call returned → every gateway refuses.
    pub enforced: Percentiles,
    /// Admin call returned → `WaitForRevision` returned (client side).
    pub wait: Percentiles,
    /// Baseline: one round of concurrent probes of all gateways with a credential they serve,
    /// i.e. what the probing itself costs (the floor of `enforced`).
    pub probe_round: Percentiles,
    /// Background load actually sent, requests per second, and how many were not 200.
    pub load_rps: f64,
    pub load_failures: u64,
}

impl PropagationReport {
    pub fn json(&self) -> Value {
        json!({
            "gateways": self.gateways,
            "revocations": self.revocations,
            "disables": self.disables,
            "deletes": self.deletes,
            "passkeyRevocations": self.passkeys,
            "enforcedAtAllGateways": self.enforced.json(),
            "waitForRevision": self.wait.json(),
            "baselineProbeRound": self.probe_round.json(),
            "backgroundLoadRps": self.load_rps,
            "backgroundLoadFailures": self.load_failures,
        })
    }

    pub fn text(&self) -> String {
        let what = if self.passkeys > 0 {
            format!("{} passkey, sessions probed", self.passkeys)
        } else {
            format!("{} disable, {} delete", self.disables, self.deletes)
        };
        format!(
            "{} revocations ({what}) at {} gateways, background load {:.0} req/s ({} not 200)\n  enforced at all gateways: {}\n  --wait (WaitForRevision):  {}\n  baseline probe round:     {}",
            self.revocations,
            self.gateways,
            self.load_rps,
            self.load_failures,
            self.enforced.line(),
            self.wait.line(),
            self.probe_round.line()
        )
    }
}

/// A credential minted for one revocation.
// A handful are alive at once; the size of the key variant (which grew with the key's limits
// fields) does not matter.
#[allow(clippy::large_enum_variant)]
enum Minted {
    Key(pb::IssuedKey),
    Passkey(EnrolledSession),
}

impl Minted {
    /// What the gateways are probed with, as a bearer.
    fn credential(&self) -> &str {
        match self {
            Self::Key(issued) => &issued.key,
            Self::Passkey(session) => &session.token,
        }
    }
}

/// Paced background requests with `key` over `gateways` (two senders each) until `stop` is
/// set; also the region simulator's background load.
pub(crate) fn start_load(
    gateways: &[String],
    key: &str,
    rps: u64,
    sent: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    if rps == 0 {
        return tasks;
    }
    // Two paced senders per gateway.
    let senders = gateways.len() as u64 * 2;
    let period = Duration::from_secs_f64(senders as f64 / rps as f64);
    for (index, url) in gateways.iter().cycle().take(senders as usize).enumerate() {
        let (url, key) = (url.clone(), key.to_owned());
        let (sent, failures, stop) = (Arc::clone(&sent), Arc::clone(&failures), Arc::clone(&stop));
        tasks.spawn(async move {
            let client = probe::client();
            // Spread the senders' phases over one period.
            tokio::time::sleep(period.mul_f64(index as f64 / senders as f64)).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(probe::answer(&client, &url, &key).await, Ok(a) if a.status == 200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tasks
}

fn create_key(owner: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        owner: owner.into(),
        ..Default::default()
    }
}

/// Runs the measurement.
pub async fn run(args: &PropagationArgs) -> Result<PropagationReport, String> {
    let mut admin = keygate::admin_client::connect(&args.endpoint, Some(&args.token), None)
        .await
        .map_err(|e| e.to_string())?;
    let http = probe::client();
    let passkey_api = match &args.revoke {
        Revoke::Keys => None,
        Revoke::Passkeys { api } => Some(PasskeyApi::new(api)),
    };
    // User ids must not collide with an earlier run against the same control plane.
    let run_id: u32 = rand::random();

    let load_key = admin
        .create_key(create_key("propagation-load"))
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .key;
    for url in &args.gateways {
        probe::until_served(&http, url, &load_key).await?;
    }
    let (sent, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let mut load = start_load(
        &args.gateways,
        &load_key,
        args.load_rps,
        Arc::clone(&sent),
        Arc::clone(&failures),
        Arc::clone(&stop),
    );

    let mut enforced = Vec::with_capacity(args.revocations);
    let mut waited = Vec::with_capacity(args.revocations);
    let mut probe_rounds = Vec::with_capacity(args.revocations);
    let (mut disables, mut deletes, mut passkeys) = (0, 0, 0);
    for i in 0..args.revocations {
        let minted = match &passkey_api {
            None => Minted::Key(
                admin
                    .create_key(create_key("propagation"))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner(),
            ),
            Some(api) => Minted::Passkey(
                api.enroll(&mut admin, &format!("propagation-{run_id:08x}-{i}"))
                    .await?,
            ),
        };
        let credential = minted.credential();
        for url in &args.gateways {
            probe::until_served(&http, url, credential).await?;
        }
        probe_rounds.push(probe::probe_round(&http, &args.gateways, credential).await?);
        let (revision, expected) = revoke(&mut admin, &minted, i).await?;
        match expected {
            Expected::Disabled => disables += 1,
            Expected::NotFound => deletes += 1,
            Expected::Revoked => passkeys += 1,
        }
        let since = Instant::now();
        let mut waiter = admin.clone();
        let wait = tokio::spawn(async move {
            let outcome = waiter
                .wait_for_revision(pb::WaitForRevisionRequest {
                    revision,
                    timeout_ms: 10_000,
                })
                .await;
            (since.elapsed(), outcome.map(|r| r.into_inner().complete))
        });
        let (slowest, refusals) =
            probe::until_refused_everywhere(&http, &args.gateways, credential, since).await?;
        if let Some(wrong) = refusals.iter().find(|answer| !expected.matches(answer)) {
            return Err(format!(
                "a gateway refused with {wrong}, not {}",
                expected.describe()
            ));
        }
        enforced.push(slowest);
        let (elapsed, complete) = wait.await.map_err(|e| e.to_string())?;
        match complete {
            Ok(true) => waited.push(elapsed),
            Ok(false) => return Err(format!("WaitForRevision({revision}) timed out")),
            Err(status) => return Err(format!("WaitForRevision({revision}): {status}")),
        }
    }

    stop.store(true, Ordering::Relaxed);
    let load_seconds = load_started.elapsed().as_secs_f64();
    while load.join_next().await.is_some() {}
    Ok(PropagationReport {
        gateways: args.gateways.len(),
        revocations: args.revocations,
        disables,
        deletes,
        passkeys,
        enforced: Percentiles::of(&mut enforced),
        wait: Percentiles::of(&mut waited),
        probe_round: Percentiles::of(&mut probe_rounds),
        load_rps: sent.load(Ordering::Relaxed) as f64 / load_seconds,
        load_failures: failures.load(Ordering::Relaxed),
    })
}

/// The refusal a revocation must produce at every gateway.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Disabled,
    NotFound,
    Revoked,
}

impl Expected {
    fn status_and_code(self) -> (u16, &'static str) {
        match self {
            Self::Disabled => (403, "DISABLED"),
            Self::NotFound => (401, "NOT_FOUND"),
            Self::Revoked => (401, "REVOKED"),
        }
    }

    fn matches(self, answer: &Answer) -> bool {
        let (status, code) = self.status_and_code();
        answer.is(status, code)
    }

    fn describe(self) -> String {
        let (status, code) = self.status_and_code();
        format!("{status} {code}")
    }
}

/// Revokes the `i`th minted credential (keys: even disabled, odd deleted); returns the change's
/// revision and the refusal it must produce.
async fn revoke(
    admin: &mut AdminClient,
    minted: &Minted,
    i: usize,
) -> Result<(u64, Expected), String> {
    match minted {
        Minted::Key(issued) if i.is_multiple_of(2) => admin
            .set_key_enabled(pb::SetKeyEnabledRequest {
                key_id: issued.key_id.clone(),
                enabled: false,
            })
            .await
            .map(|r| (r.into_inner().revision, Expected::Disabled)),
        Minted::Key(issued) => admin
            .delete_key(pb::DeleteKeyRequest {
                key_id: issued.key_id.clone(),
            })
            .await
            .map(|r| (r.into_inner().revision, Expected::NotFound)),
        Minted::Passkey(session) => admin
            .revoke_passkey(pb::RevokePasskeyRequest {
                user_id: session.user_id.clone(),
                passkey_id: session.passkey_id.clone(),
            })
            .await
            .map(|r| (r.into_inner().revision, Expected::Revoked)),
    }
    .map_err(|status| status.to_string())
}
