//! The WebAuthn relying party, over `webauthn-rs`: starting and finishing registration and
//! authentication ceremonies, with the relying-party id and origin from the configuration.
//!
//! Passkeys only: user verification is required in both ceremonies (the library's passkey
//! flows insist on it), the origin must be exactly the configured one (port included), and
//! registration asks for a discoverable credential, so that a user can sign in without typing
//! a user id. Sign-in is always discoverable (no list of the user's credentials in the
//! options), so its options look the same whoever is named. The library's serialised
//! credential is what the store keeps; from it come the counter and the backup flags.

use serde_json::Value;
use webauthn_rs::prelude::{
    Credential, DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::store::{PasskeyRecord, UpdatedCredential, UserRecord};

/// The relying party's name, as authenticators show it.
const RP_NAME: &str = "keygate";

/// The relying party could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelyingPartyError {
    #[error("rp_origin {0:?} is not a URL")]
    Origin(String),
    #[error(
        "rp_id {rp_id:?} must be the host of rp_origin {origin:?} or a parent domain of it (an IP address cannot be a WebAuthn relying party; use localhost)"
    )]
    Mismatch { rp_id: String, origin: String },
}

/// Why a ceremony failed, with the code the HTTP API answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CeremonyError {
    pub code: &'static str,
    pub message: String,
}

impl CeremonyError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Which ceremony an error came from, for its generic code.
#[derive(Debug, Clone, Copy)]
enum Ceremony {
    Registration,
    Authentication,
}

/// Maps the library's errors to stable codes: the ones a client can act on get their own.
fn ceremony_error(error: &WebauthnError, ceremony: Ceremony) -> CeremonyError {
    use WebauthnError as E;
    match error {
        E::InvalidRPOrigin | E::CredentialCrossOrigin => CeremonyError::new(
            "ORIGIN_MISMATCH",
            "the credential was made for another origin than this site",
        ),
        E::InvalidRPIDHash => CeremonyError::new(
            "RP_ID_MISMATCH",
            "the credential was made for another relying party",
        ),
        E::MismatchedChallenge | E::ChallengeNotFound => CeremonyError::new(
            "CHALLENGE_MISMATCH",
            "the credential answers another challenge than this ceremony's",
        ),
        E::InvalidClientDataType => CeremonyError::new(
            "MALFORMED_CREDENTIAL",
            "the credential is from the wrong kind of ceremony",
        ),
        E::UserNotVerified | E::UserNotPresent => CeremonyError::new(
            "USER_NOT_VERIFIED",
            "the authenticator did not verify the user (a PIN or biometric is required)",
        ),
        E::ParseCBORFailure(_)
        | E::ParseJSONFailure(_)
        | E::ParseNOMFailure
        | E::ParseInsufficientBytesAvailable
        | E::MissingAttestationCredentialData
        | E::COSEKeyInvalidCBORValue
        | E::COSEKeyInvalidType => CeremonyError::new(
            "MALFORMED_CREDENTIAL",
            "the credential could not be decoded",
        ),
        E::CredentialPossibleCompromise => CeremonyError::new(
            "AUTHENTICATION_FAILED",
            "the authenticator's counter went backwards; the passkey may have been cloned",
        ),
        other => match ceremony {
            Ceremony::Registration => CeremonyError::new(
                "REGISTRATION_FAILED",
                format!("the passkey could not be registered: {other}"),
            ),
            Ceremony::Authentication => CeremonyError::new(
                "AUTHENTICATION_FAILED",
                "the passkey's signature does not verify",
            ),
        },
    }
}

/// A passkey that passed registration, ready to store.
#[derive(Debug, Clone)]
pub struct VerifiedPasskey {
    pub credential_id: Vec<u8>,
    pub credential_json: String,
    pub backup_eligible: bool,
    pub backed_up: bool,
    /// The authenticator model, from the attested credential data (all zero when the
    /// authenticator keeps it private).
    pub aaguid: [u8; 16],
}

/// The state of an authentication ceremony between begin and finish. Always discoverable: any
/// of the site's passkeys may answer, naming its user by the user handle. (A sign-in for a
/// named user once listed that user's credentials in the options, which told anyone who asked
/// whether the user existed and which passkeys they had.)
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LoginState(DiscoverableAuthentication);

/// The relying party.
pub struct RelyingParty {
    webauthn: Webauthn,
    rp_id: String,
    origin: Url,
}

impl RelyingParty {
    /// A relying party for `rp_id` on `origin` (scheme, host and port must match exactly).
    pub fn new(rp_id: &str, origin: &str) -> Result<Self, RelyingPartyError> {
        let url = Url::parse(origin).map_err(|_| RelyingPartyError::Origin(origin.to_owned()))?;
        let mismatch = || RelyingPartyError::Mismatch {
            rp_id: rp_id.to_owned(),
            origin: origin.to_owned(),
        };
        let webauthn = WebauthnBuilder::new(rp_id, &url)
            .map_err(|_| mismatch())?
            .rp_name(RP_NAME)
            .build()
            .map_err(|_| mismatch())?;
        Ok(Self {
            webauthn,
            rp_id: rp_id.to_owned(),
            origin: url,
        })
    }

    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    /// Whether the origin is `http://localhost` or `http://127.0.0.1` (any port): the only
    /// plain-HTTP origins browsers allow passkeys on.
    pub fn is_plain_http_localhost(&self) -> bool {
        self.origin.scheme() == "http"
            && matches!(self.origin.host_str(), Some("localhost" | "127.0.0.1"))
    }

    /// The origin, without a trailing slash (`http://localhost:7080`).
    pub fn origin(&self) -> String {
        self.origin.as_str().trim_end_matches('/').to_owned()
    }

    /// Starts registering a passkey for `user`, excluding the credentials it already has.
    /// Returns the `publicKey` creation options for `navigator.credentials.create`.
    pub fn start_registration(
        &self,
        user: &UserRecord,
        existing: &[PasskeyRecord],
    ) -> Result<(Value, PasskeyRegistration), CeremonyError> {
        let exclude = existing
            .iter()
            .map(|passkey| passkey.credential_id.clone())
            .collect::<Vec<_>>();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(
                Uuid::from_bytes(user.handle),
                &user.user_id,
                &user.user_id,
                (!exclude.is_empty()).then_some(exclude),
            )
            .map_err(|e| ceremony_error(&e, Ceremony::Registration))?;
        let mut options = serde_json::to_value(&options).map_err(internal)?;
        // Ask for a discoverable credential, so sign-in needs no user id. The library leaves
        // this to the caller because some security keys have little room for them; passkey
        // providers (platform, password managers) all keep them.
        if let Some(selection) = options
            .pointer_mut("/publicKey/authenticatorSelection")
            .and_then(Value::as_object_mut)
        {
            selection.insert("residentKey".into(), "required".into());
            selection.insert("requireResidentKey".into(), true.into());
        }
        Ok((take_public_key(options), state))
    }

    /// Checks a registration response against its ceremony.
    pub fn finish_registration(
        &self,
        credential: &RegisterPublicKeyCredential,
        state: &PasskeyRegistration,
    ) -> Result<VerifiedPasskey, CeremonyError> {
        let passkey = self
            .webauthn
            .finish_passkey_registration(credential, state)
            .map_err(|e| ceremony_error(&e, Ceremony::Registration))?;
        // The library checked the attestation object; it does not hand out the AAGUID of a
        // "none" attestation, so it is read here from the same bytes.
        let aaguid = registered_aaguid(&credential.response.attestation_object)?;
        let credential_json = serde_json::to_string(&passkey).map_err(internal)?;
        let inner = Credential::from(passkey);
        Ok(VerifiedPasskey {
            credential_id: inner.cred_id,
            credential_json,
            backup_eligible: inner.backup_eligible,
            backed_up: inner.backup_state,
            aaguid,
        })
    }

    /// Starts a discoverable authentication. Returns the `publicKey` request options for
    /// `navigator.credentials.get`.
    pub fn start_authentication(&self) -> Result<(Value, LoginState), CeremonyError> {
        let (options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|e| ceremony_error(&e, Ceremony::Authentication))?;
        let options = serde_json::to_value(&options).map_err(internal)?;
        Ok((take_public_key(options), LoginState(state)))
    }

    /// Which credential (and, for a discoverable one, which user handle) answered.
    pub fn identify(&self, credential: &PublicKeyCredential) -> (Vec<u8>, Option<[u8; 16]>) {
        let handle = credential
            .get_user_unique_id()
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
        (credential.get_credential_id().to_vec(), handle)
    }

    /// Checks an authentication response against its ceremony and the stored passkey that the
    /// response names. Returns the credential's new state when it changed (counter, flags).
    pub fn finish_authentication(
        &self,
        credential: &PublicKeyCredential,
        state: LoginState,
        passkey: &PasskeyRecord,
    ) -> Result<Option<UpdatedCredential>, CeremonyError> {
        let mut stored = stored_passkey(passkey)?;
        let result = self
            .webauthn
            .finish_discoverable_authentication_v2(credential, state.0, &stored)
            .map_err(|e| ceremony_error(&e, Ceremony::Authentication))?;
        if !result.user_verified() {
            return Err(ceremony_error(
                &WebauthnError::UserNotVerified,
                Ceremony::Authentication,
            ));
        }
        if result.cred_id().as_slice() != passkey.credential_id.as_slice() {
            return Err(CeremonyError::new(
                "AUTHENTICATION_FAILED",
                "the credential is not the passkey it claims to be",
            ));
        }
        if stored.update_credential(&result) != Some(true) {
            return Ok(None);
        }
        let credential_json = serde_json::to_string(&stored).map_err(internal)?;
        let inner = Credential::from(stored);
        Ok(Some(UpdatedCredential {
            credential_json,
            backup_eligible: inner.backup_eligible,
            backed_up: inner.backup_state,
        }))
    }
}

/// Offsets in authenticator data: the RP id hash (32 bytes), the flags (1), the signature
/// counter (4), then, when the AT flag is set, the attested credential data, which begins with
/// the AAGUID (16).
const FLAGS_AT: usize = 32;
const AAGUID_AT: usize = 37;
/// The "attested credential data included" flag.
const FLAG_AT: u8 = 1 << 6;

/// The AAGUID in a registration's attestation object (CBOR `{"fmt","attStmt","authData"}`).
fn registered_aaguid(attestation_object: &[u8]) -> Result<[u8; 16], CeremonyError> {
    let malformed = || {
        CeremonyError::new(
            "MALFORMED_CREDENTIAL",
            "the attestation object carries no attested credential data",
        )
    };
    let object: ciborium::Value =
        ciborium::from_reader(attestation_object).map_err(|_| malformed())?;
    let auth_data = object
        .as_map()
        .and_then(|entries| {
            entries
                .iter()
                .find(|(key, _)| key.as_text() == Some("authData"))
        })
        .and_then(|(_, value)| value.as_bytes())
        .ok_or_else(malformed)?;
    aaguid_in_auth_data(auth_data).ok_or_else(malformed)
}

/// The AAGUID in authenticator data, if it has attested credential data.
fn aaguid_in_auth_data(auth_data: &[u8]) -> Option<[u8; 16]> {
    let flags = *auth_data.get(FLAGS_AT)?;
    if flags & FLAG_AT == 0 {
        return None;
    }
    auth_data.get(AAGUID_AT..AAGUID_AT + 16)?.try_into().ok()
}

/// The library's options are `{"publicKey": {…}, …}`; the API answers with the inner object.
fn take_public_key(mut options: Value) -> Value {
    options
        .get_mut("publicKey")
        .map(Value::take)
        .unwrap_or(Value::Null)
}

fn stored_passkey(passkey: &PasskeyRecord) -> Result<Passkey, CeremonyError> {
    serde_json::from_str(&passkey.credential_json).map_err(|error| {
        tracing::error!(passkey_id = %passkey.passkey_id, %error, "stored passkey does not decode");
        CeremonyError::new("INTERNAL", "a stored passkey is unreadable")
    })
}

fn internal(error: serde_json::Error) -> CeremonyError {
    tracing::error!(%error, "WebAuthn options do not serialise");
    CeremonyError::new("INTERNAL", "internal error")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn user() -> UserRecord {
        UserRecord {
            user_id: "alice".into(),
            handle: [7; 16],
            created_unix_ms: 0,
            disabled: false,
            sessions_revoked_before_unix_ms: 0,
            state_prune_after_unix_ms: 0,
        }
    }

    #[test]
    fn the_relying_party_must_match_its_origin() {
        assert!(RelyingParty::new("localhost", "http://localhost:7080").is_ok());
        assert!(RelyingParty::new("example.com", "https://id.example.com").is_ok());
        assert!(matches!(
            RelyingParty::new("localhost", "http://127.0.0.1:7080"),
            Err(RelyingPartyError::Mismatch { .. })
        ));
        assert!(matches!(
            RelyingParty::new("example.com", "https://example.org"),
            Err(RelyingPartyError::Mismatch { .. })
        ));
        assert!(matches!(
            RelyingParty::new("localhost", "not a url"),
            Err(RelyingPartyError::Origin(_))
        ));
    }

    #[test]
    fn registration_options_ask_for_a_verified_discoverable_passkey() {
        let rp = RelyingParty::new("localhost", "http://localhost:7080").unwrap();
        let (options, _state) = rp.start_registration(&user(), &[]).unwrap();
        assert_eq!(options["rp"]["id"], "localhost");
        assert_eq!(options["user"]["name"], "alice");
        let selection = &options["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "required");
        assert_eq!(selection["requireResidentKey"], true);
        assert_eq!(selection["userVerification"], "required");
        // Binary fields are base64url strings.
        assert!(options["challenge"].as_str().is_some_and(|c| c.len() >= 43));
        assert!(options["user"]["id"].is_string());
        assert_eq!(rp.origin(), "http://localhost:7080");
        assert!(rp.is_plain_http_localhost());
        let public = RelyingParty::new("example.com", "https://id.example.com").unwrap();
        assert!(!public.is_plain_http_localhost());
        let lookalike = RelyingParty::new("localhost.example.com", "http://localhost.example.com");
        assert!(!lookalike.unwrap().is_plain_http_localhost());
    }

    #[test]
    fn the_aaguid_is_read_from_attested_credential_data_only() {
        let mut auth_data = vec![0u8; 37];
        auth_data[FLAGS_AT] = FLAG_AT | 0x05;
        auth_data.extend_from_slice(&[0xab; 16]);
        auth_data.extend_from_slice(&[0, 16]);
        assert_eq!(aaguid_in_auth_data(&auth_data), Some([0xab; 16]));
        let mut object = Vec::new();
        let value = ciborium::Value::Map(vec![
            ("fmt".into(), "none".into()),
            ("attStmt".into(), ciborium::Value::Map(vec![])),
            ("authData".into(), ciborium::Value::Bytes(auth_data.clone())),
        ]);
        ciborium::into_writer(&value, &mut object).unwrap();
        assert_eq!(registered_aaguid(&object).unwrap(), [0xab; 16]);

        auth_data[FLAGS_AT] = 0x05;
        assert_eq!(aaguid_in_auth_data(&auth_data), None, "no AT flag");
        assert_eq!(aaguid_in_auth_data(&[0; 40]), None, "too short");
        let refused = registered_aaguid(b"not cbor").unwrap_err();
        assert_eq!(refused.code, "MALFORMED_CREDENTIAL");
    }

    #[test]
    fn authentication_options_require_user_verification() {
        let rp = RelyingParty::new("localhost", "http://localhost:7080").unwrap();
        let (options, _state) = rp.start_authentication().unwrap();
        assert_eq!(options["userVerification"], "required");
        assert_eq!(options["rpId"], "localhost");
        let empty = options["allowCredentials"]
            .as_array()
            .is_none_or(Vec::is_empty);
        assert!(empty, "discoverable: no allow list");
    }
}
