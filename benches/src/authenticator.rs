//! A software passkey authenticator (1Password's passkey-rs: a real CTAP2 authenticator and
//! WebAuthn client, holding discoverable credentials in memory and always verifying its user),
//! driven with the page's JSON: options JSON in, credential JSON (base64url) out.
//!
//! One file serves two packages: it is this crate's `authenticator` module (the passkey
//! propagation benchmark enrolls real passkeys with it) and the integration tests include the
//! very same file (`tests/support/passkeys.rs`, `#[path]`). So it uses only crates both have and
//! nothing from either crate around it.

use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use passkey_authenticator::{
    Authenticator, CredentialStore, DiscoverabilitySupport, StoreInfo, UiHint, UserCheck,
    UserValidationMethod,
};
use passkey_client::{Client, DefaultClientData};
use passkey_crypto::AvailableBackend;
use passkey_types::Passkey;
use passkey_types::ctap2::make_credential::{
    Options, PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity,
};
use passkey_types::ctap2::{Aaguid, Ctap2Error, StatusCode};
use passkey_types::webauthn::{
    CredentialCreationOptions, CredentialRequestOptions, PublicKeyCredentialDescriptor,
};
use serde_json::{Value, json};
use url::Url;

/// Credentials kept in memory; a request with no allow list finds all of the site's
/// credentials (discoverable sign-in).
#[derive(Clone, Default)]
pub struct Credentials(Arc<Mutex<Vec<Passkey>>>);

impl Credentials {
    /// The stored credentials. A panic elsewhere while the lock was held cannot leave the list
    /// half-changed (every change is one push or one assignment), so a poisoned lock is used as is.
    fn all(&self) -> std::sync::MutexGuard<'_, Vec<Passkey>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl CredentialStore for Credentials {
    type PasskeyItem = Passkey;

    async fn find_credentials(
        &self,
        allow: Option<&[PublicKeyCredentialDescriptor]>,
        rp_id: &str,
        _user_handle: Option<&[u8]>,
    ) -> Result<Vec<Passkey>, StatusCode> {
        let found: Vec<Passkey> = self
            .all()
            .iter()
            .filter(|passkey| passkey.rp_id == rp_id)
            .filter(|passkey| match allow {
                Some(allow) if !allow.is_empty() => allow
                    .iter()
                    .any(|descriptor| *descriptor.id == *passkey.credential_id),
                _ => true,
            })
            .cloned()
            .collect();
        if found.is_empty() {
            Err(Ctap2Error::NoCredentials.into())
        } else {
            // Newest first: the authenticator signs with the first one, as a person picks the
            // passkey they made last.
            Ok(found.into_iter().rev().collect())
        }
    }

    async fn save_credential(
        &mut self,
        credential: Passkey,
        _user: PublicKeyCredentialUserEntity,
        _rp: PublicKeyCredentialRpEntity,
        _options: Options,
    ) -> Result<(), StatusCode> {
        self.all().push(credential);
        Ok(())
    }

    async fn update_credential(&mut self, credential: &Passkey) -> Result<(), StatusCode> {
        let mut all = self.all();
        if let Some(slot) = all
            .iter_mut()
            .find(|stored| stored.credential_id == credential.credential_id)
        {
            *slot = credential.clone();
        }
        Ok(())
    }

    async fn get_info(&self) -> StoreInfo {
        StoreInfo {
            discoverability: DiscoverabilitySupport::Full,
        }
    }
}

/// A user who is always present and always verified (a PIN or biometric that never fails).
struct AlwaysVerified;

#[async_trait::async_trait]
impl UserValidationMethod for AlwaysVerified {
    type PasskeyItem = Passkey;

    async fn check_user<'a>(
        &self,
        _hint: UiHint<'a, Passkey>,
        presence: bool,
        verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        Ok(UserCheck {
            presence,
            verification,
        })
    }

    fn is_presence_enabled(&self) -> bool {
        true
    }

    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

/// One person's device: a software authenticator and the origin its "browser" is on.
#[derive(Clone)]
pub struct Device {
    pub credentials: Credentials,
    pub origin: Url,
}

impl Device {
    /// A device whose browser shows pages of `origin` (e.g. `http://localhost:7080`).
    ///
    /// # Panics
    /// If `origin` is not a URL (it is the caller's constant, not received data).
    pub fn new(origin: &str) -> Self {
        Self {
            credentials: Credentials::default(),
            origin: Url::parse(origin).expect("the device's origin is a URL"),
        }
    }

    fn authenticator(&self) -> Authenticator<Credentials, AlwaysVerified, AvailableBackend> {
        let mut authenticator = Authenticator::new(
            Aaguid::new_empty(),
            self.credentials.clone(),
            AlwaysVerified,
            AvailableBackend,
        );
        // Counters let the tests see the control plane store them.
        authenticator.set_make_credentials_with_signature_counter(true);
        authenticator
    }

    /// `navigator.credentials.create({publicKey})` on this device, as the page's JSON.
    ///
    /// # Panics
    /// If the options are not in the standard JSON form or the authenticator refuses (tests
    /// want that; [`Device::try_create_on`] reports it instead).
    pub async fn create(&self, public_key: &Value) -> Value {
        self.create_on(&self.origin.clone(), public_key).await
    }

    /// The same, from a page on another origin (the relying party must refuse it).
    ///
    /// # Panics
    /// As [`Device::create`].
    pub async fn create_on(&self, origin: &Url, public_key: &Value) -> Value {
        self.try_create_on(origin, public_key)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// `navigator.credentials.create({publicKey})` from a page on `origin`; an error says why
    /// the options were unusable or the authenticator refused.
    pub async fn try_create_on(&self, origin: &Url, public_key: &Value) -> Result<Value, String> {
        let options = CredentialCreationOptions {
            public_key: serde_json::from_value(public_key.clone()).map_err(|error| {
                format!("creation options not in the standard JSON form: {error}")
            })?,
        };
        let created = Client::new(self.authenticator())
            .allows_insecure_localhost(true)
            .register(origin, options, DefaultClientData)
            .await
            .map_err(|error| format!("the authenticator refused to register: {error:?}"))?;
        Ok(json!({
            "id": created.id,
            "rawId": b64(&created.raw_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&created.response.attestation_object),
                "clientDataJSON": b64(&created.response.client_data_json),
                "transports": ["internal"],
            },
            "extensions": {},
        }))
    }

    /// `navigator.credentials.get({publicKey})` on this device, as the page's JSON.
    ///
    /// # Panics
    /// As [`Device::create`] ([`Device::try_get`] reports it instead).
    pub async fn get(&self, public_key: &Value) -> Value {
        self.try_get(public_key)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// `navigator.credentials.get({publicKey})` on this device; an error says why the options
    /// were unusable or the authenticator refused.
    pub async fn try_get(&self, public_key: &Value) -> Result<Value, String> {
        let options = CredentialRequestOptions {
            public_key: serde_json::from_value(public_key.clone()).map_err(|error| {
                format!("request options not in the standard JSON form: {error}")
            })?,
        };
        let origin = self.origin.clone();
        let asserted = Client::new(self.authenticator())
            .allows_insecure_localhost(true)
            .authenticate(&origin, options, DefaultClientData)
            .await
            .map_err(|error| format!("the authenticator refused to sign: {error:?}"))?;
        Ok(json!({
            "id": asserted.id,
            "rawId": b64(&asserted.raw_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&asserted.response.authenticator_data),
                "clientDataJSON": b64(&asserted.response.client_data_json),
                "signature": b64(&asserted.response.signature),
                "userHandle": asserted.response.user_handle.as_deref().map(|handle| b64(handle)),
            },
            "extensions": {},
        }))
    }

    /// How many credentials this device holds.
    pub fn credential_count(&self) -> usize {
        self.credentials.all().len()
    }
}

/// Unpadded base64url, as WebAuthn's JSON forms use.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
