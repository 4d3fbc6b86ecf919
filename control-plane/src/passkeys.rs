//! Wiring of the passkey side: from the configuration and the bound HTTP address to the
//! relying party, the session signer (its first key made with the first user, and the key
//! rotated at start when `session_lifetime` changed), the
//! operator operations, the self-service rules and the HTTP API over them, plus the background
//! pruning of expired state.
//!
//! - `self_service` — the rules behind the passkey page (ceremonies, rate limits, flows),
//!   returning domain outcomes;
//! - `refusal` — why a self-service step was refused, with its stable code;
//! - `providers` — provider names and icons by AAGUID (the vendored community list, or
//!   `--aaguid-names FILE`);
//! - `policy` — `[passkey_policy]`: which AAGUIDs and which kinds of passkeys may register.

pub mod policy;
pub mod providers;
pub mod refusal;
pub mod self_service;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ControlPlaneConfig};
use crate::error::ControlPlaneError;
use keygate_ratelimit::Rate;

use crate::http::{PasskeyApi, TrustedProxies};
use crate::mail::Mailer;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::users::Users;
use crate::webauthn::RelyingParty;

pub use self::providers::Providers;
use self::self_service::{Limits, SelfService};

/// The passkey side of one control plane.
pub struct Passkeys {
    pub users: Users,
    pub sessions: Sessions,
    pub api: Arc<PasskeyApi>,
}

impl Passkeys {
    /// Builds the relying party for the configured (or default) id and origin, with provider
    /// names from `providers` and the configured policy, and rotates the
    /// session signing key if it signs another lifetime than the configured one
    /// ([`Sessions::rotate_for_lifetime`]). (The first session signing key is created with the
    /// first user, so that a control plane used only for API keys appends no event of its own.)
    pub async fn open(
        config: &ControlPlaneConfig,
        http_addr: SocketAddr,
        store: Arc<dyn Store>,
        providers: Providers,
    ) -> Result<Self, ControlPlaneError> {
        let providers = Arc::new(providers);
        let origin = config.relying_party_origin(http_addr);
        let relying_party =
            RelyingParty::new(&config.relying_party_id(), &origin).map_err(|error| {
                ControlPlaneError::Config(ConfigError::RelyingParty(error.to_string()))
            })?;
        let sessions = Sessions::new(Arc::clone(&store), config.session_lifetime);
        sessions.rotate_for_lifetime().await?;
        tracing::info!(policy = ?config.passkey_policy, "passkey policy");
        let users = Users::new(Arc::clone(&store), sessions.clone(), relying_party.origin())
            .with_mailer(Mailer::from_config(config)?)
            .with_passkey_policy(config.passkey_policy.clone(), Arc::clone(&providers));
        let limits = Limits {
            per_address: Rate::per_minute(config.passkey_rate_per_address),
            per_user: Rate::per_minute(config.passkey_rate_per_user),
            ceremonies_per_address: config.max_ceremonies_per_address,
        };
        tracing::info!(rp_id = %relying_party.rp_id(), origin = %origin, "passkey relying party ready");
        let rules = SelfService::new(store, relying_party, sessions.clone(), &limits)
            .with_passkey_policy(config.passkey_policy.clone(), Arc::clone(&providers));
        let trusted_proxies = TrustedProxies::new(config.trusted_proxies.clone());
        let api = Arc::new(PasskeyApi::new(rules, trusted_proxies));
        Ok(Self {
            users,
            sessions,
            api,
        })
    }

    /// Prunes expired sessions, revocations, retired keys and enrollment links until `stop`.
    pub async fn maintain(&self, stop: CancellationToken) {
        self.sessions.prune_periodically(stop).await;
    }
}
