//! Wiring of the passkey side: from the configuration and the bound HTTP address to the
//! relying party, the session signer (with its first key created on first start), the
//! operator operations and the HTTP API, plus the background pruning of expired state.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ControlPlaneConfig};
use crate::error::ControlPlaneError;
use crate::http::{ApiSettings, PasskeyApi};
use crate::rate_limit::Rate;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::users::Users;
use crate::webauthn::RelyingParty;

/// The passkey side of one control plane.
pub struct Passkeys {
    pub users: Users,
    pub sessions: Sessions,
    pub api: Arc<PasskeyApi>,
}

impl Passkeys {
    /// Builds the relying party for the configured (or default) id and origin. (The first
    /// session signing key is created with the first user, so that a control plane used only
    /// for API keys appends no event of its own.)
    pub async fn open(
        config: &ControlPlaneConfig,
        http_addr: SocketAddr,
        store: Arc<dyn Store>,
    ) -> Result<Self, ControlPlaneError> {
        let origin = config.relying_party_origin(http_addr);
        let relying_party =
            RelyingParty::new(&config.relying_party_id(), &origin).map_err(|error| {
                ControlPlaneError::Config(ConfigError::RelyingParty(error.to_string()))
            })?;
        let sessions = Sessions::new(Arc::clone(&store), config.session_lifetime);
        let users = Users::new(Arc::clone(&store), sessions.clone(), relying_party.origin());
        let settings = ApiSettings {
            per_address: Rate {
                per_minute: config.passkey_rate_per_address,
            },
            per_user: Rate {
                per_minute: config.passkey_rate_per_user,
            },
        };
        tracing::info!(rp_id = %relying_party.rp_id(), origin = %origin, "passkey relying party ready");
        let api = Arc::new(PasskeyApi::new(
            store,
            relying_party,
            sessions.clone(),
            &settings,
        ));
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
