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
    /// The authenticator model's AAGUID in its registrations (all zero by default, as an
    /// authenticator that keeps its model private).
    pub aaguid: [u8; 16],
    /// The backup flags its registrations carry: eligible (BE: a synced, multi-device passkey)
    /// and backed up (BS). By default both are set, as passkey-rs always sets them (it acts
    /// as a syncing password manager).
    pub backup: BackupFlags,
}

/// The backup flags of a registration's authenticator data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupFlags {
    /// BE: the credential may be backed up (synced to the provider's other devices).
    pub eligible: bool,
    /// BS: the credential is backed up now.
    pub backed_up: bool,
}

impl BackupFlags {
    /// A synced passkey, backed up: what passkey-rs sends.
    pub const SYNCED: Self = Self {
        eligible: true,
        backed_up: true,
    };
    /// A passkey that never leaves its device (a security key, a platform authenticator
    /// without sync).
    pub const DEVICE_BOUND: Self = Self {
        eligible: false,
        backed_up: false,
    };
}

impl Default for BackupFlags {
    fn default() -> Self {
        Self::SYNCED
    }
}

/// The flags byte's BE and BS bits (WebAuthn, "Authenticator Data").
const FLAG_BE: u8 = 1 << 3;
const FLAG_BS: u8 = 1 << 4;
/// Where the flags byte is in authenticator data: after the 32-byte RP id hash.
const FLAGS_AT: usize = 32;

impl Device {
    /// A device whose browser shows pages of `origin` (e.g. `http://localhost:7080`).
    ///
    /// # Panics
    /// If `origin` is not a URL (it is the caller's constant, not received data).
    pub fn new(origin: &str) -> Self {
        Self::on(Url::parse(origin).expect("the device's origin is a URL"))
    }

    /// A device whose browser shows pages of `origin`, with no credentials yet, an all-zero
    /// AAGUID and passkey-rs's backup flags.
    pub fn on(origin: Url) -> Self {
        Self {
            credentials: Credentials::default(),
            origin,
            aaguid: [0; 16],
            backup: BackupFlags::default(),
        }
    }

    /// The same device, registering as the authenticator model `aaguid`.
    #[must_use]
    pub fn with_aaguid(self, aaguid: [u8; 16]) -> Self {
        Self { aaguid, ..self }
    }

    /// The same device, registering with these backup flags (a password manager that syncs
    /// sets `eligible`). Sign-ins still carry passkey-rs's own flags (both set, and signed),
    /// and a relying party refuses a sign-in whose backup eligibility changed: use a device
    /// with other flags than [`BackupFlags::SYNCED`] to register only.
    #[must_use]
    pub fn with_backup(self, backup: BackupFlags) -> Self {
        Self { backup, ..self }
    }

    fn authenticator(&self) -> Authenticator<Credentials, AlwaysVerified, AvailableBackend> {
        let mut authenticator = Authenticator::new(
            Aaguid::from(self.aaguid),
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
        let mut attestation_object = created.response.attestation_object.to_vec();
        set_backup_flags(&mut attestation_object, self.backup)?;
        Ok(json!({
            "id": created.id,
            "rawId": b64(&created.raw_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&attestation_object),
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

/// Sets the backup flags in the authenticator data of a "none" attestation object (CBOR
/// `{"fmt", "attStmt", "authData"}`). Nothing signs the authenticator data of a "none"
/// attestation, so the relying party sees exactly what a syncing provider would send.
fn set_backup_flags(attestation_object: &mut [u8], backup: BackupFlags) -> Result<(), String> {
    // The text key "authData" (CBOR major type 3, length 8), then a byte string header.
    const KEY: &[u8] = b"\x68authData";
    let malformed = || "the attestation object has no authData to set flags in".to_owned();
    let key_at = attestation_object
        .windows(KEY.len())
        .position(|window| window == KEY)
        .ok_or_else(malformed)?;
    let header_at = key_at + KEY.len();
    let header_len = match attestation_object.get(header_at) {
        Some(0x40..=0x57) => 1,
        Some(0x58) => 2,
        Some(0x59) => 3,
        Some(0x5a) => 5,
        _ => return Err(malformed()),
    };
    let flags = attestation_object
        .get_mut(header_at + header_len + FLAGS_AT)
        .ok_or_else(malformed)?;
    *flags &= !(FLAG_BE | FLAG_BS);
    if backup.eligible {
        *flags |= FLAG_BE;
    }
    if backup.backed_up {
        *flags |= FLAG_BS;
    }
    Ok(())
}

/// Unpadded base64url, as WebAuthn's JSON forms use.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
