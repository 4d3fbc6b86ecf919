//! The rules of the operator operations on users and their passkeys: create, disable and
//! enable users, issue, list and revoke enrollment links, list, rename and revoke passkeys
//! (and list those the passkey policy would refuse), sign a
//! user out everywhere, list, rotate and revoke session signing keys. The gRPC layer converts wire messages to the types here; the
//! store makes each operation one transaction with its events and audit row.

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::Revision;
use keygate_proto::time::now_unix_ms;

use crate::ids;
use crate::mail::enrollment::EnrollmentMail;
use crate::mail::{self, Mailer};
use crate::passkeys::policy::{PasskeyPolicy, Violation};
use crate::passkeys::providers::Providers;
use crate::sessions::Sessions;
use crate::store::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentRevoked, NewEnrollment, PasskeyRecord,
    PasskeyRemoval, PasskeyRemoved, PasskeyRename, PasskeyRenamed, Rotated, SigningKeyRecord,
    SigningKeyRevoked, Store, StoreError, UserChanged, UserCreated, UserRecord, VoidReason,
};

/// Longest user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 256;
/// Longest passkey device name, in characters.
pub const MAX_PASSKEY_NAME_CHARS: usize = 64;
/// How long an enrollment link works when the operator does not say.
pub const DEFAULT_ENROLLMENT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest an enrollment link may work.
pub const MAX_ENROLLMENT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest enrollment id accepted (ours are `enr_` and 22 digits); longer ones are refused
/// before the store is asked.
const MAX_ENROLLMENT_ID_CHARS: usize = 64;
/// Longest signing key id accepted (ours are `sk_` and 22 digits).
const MAX_SIGNING_KEY_ID_CHARS: usize = 64;

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The link was made, its email could not be sent, and the link was revoked.
    #[error("{0}")]
    EmailNotSent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A user id is the operator's own external id: 1 to 256 characters, no control characters.
pub fn check_user_id(user_id: &str) -> Result<(), UserError> {
    let chars = user_id.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS || user_id.chars().any(char::is_control) {
        return Err(UserError::InvalidArgument(format!(
            "a user id must be 1 to {MAX_USER_ID_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// A device name: at most 64 characters, no control characters; surrounding space trimmed.
pub fn clean_passkey_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.chars().count() > MAX_PASSKEY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(format!(
            "a passkey name must be at most {MAX_PASSKEY_NAME_CHARS} characters without control characters"
        ));
    }
    Ok(name.to_owned())
}

/// A passkey's new name, given in a rename: as [`clean_passkey_name`], but not empty (a
/// registration may leave the name out; a rename to nothing is a mistake).
pub fn clean_new_passkey_name(name: &str) -> Result<String, String> {
    let name = clean_passkey_name(name)?;
    if name.is_empty() {
        return Err(format!(
            "a passkey's new name must be 1 to {MAX_PASSKEY_NAME_CHARS} characters"
        ));
    }
    Ok(name)
}

/// How many stored passkeys one page of [`Users::policy_violations`] looks at.
pub const VIOLATIONS_SCAN_PAGE: usize = 1000;

/// A stored passkey the policy would refuse, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyViolator {
    pub passkey: PasskeyRecord,
    pub violation: Violation,
}

/// One page of [`Users::policy_violations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViolationsPage {
    pub violators: Vec<PolicyViolator>,
    /// Where the next page starts (a passkey id); `None`: the scan is complete.
    pub next: Option<String>,
}

/// A freshly issued enrollment link: the only place its token appears.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedEnrollment {
    pub enrollment_id: String,
    pub user_id: String,
    /// `{rp_origin}/#enroll=TOKEN`
    pub link: String,
    pub expires_unix_ms: i64,
}

impl std::fmt::Debug for IssuedEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedEnrollment")
            .field("enrollment_id", &self.enrollment_id)
            .field("user_id", &self.user_id)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

/// An enrollment link that went out by email: everything but the link itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailedEnrollment {
    pub enrollment_id: String,
    pub user_id: String,
    pub emailed_to: String,
    pub expires_unix_ms: i64,
}

/// Operator operations on users, passkeys and sessions.
#[derive(Clone)]
pub struct Users {
    store: std::sync::Arc<dyn Store>,
    sessions: Sessions,
    /// Where enrollment links point (the relying party's origin).
    origin: String,
    /// The SMTP relay enrollment links are emailed through; `None`: email is not configured.
    mailer: Option<Mailer>,
    /// Which passkeys may register (to list the stored ones it would refuse).
    policy: PasskeyPolicy,
    /// Provider names and icons by AAGUID.
    providers: Arc<Providers>,
}

impl Users {
    pub fn new(store: std::sync::Arc<dyn Store>, sessions: Sessions, origin: String) -> Self {
        Self {
            store,
            sessions,
            origin,
            mailer: None,
            policy: PasskeyPolicy::default(),
            providers: Arc::new(Providers::empty()),
        }
    }

    /// These operations, judging stored passkeys by `policy` and naming their providers from
    /// `providers` (by default nothing violates and every provider is unknown).
    pub fn with_passkey_policy(self, policy: PasskeyPolicy, providers: Arc<Providers>) -> Self {
        Self {
            policy,
            providers,
            ..self
        }
    }

    /// Provider names and icons by AAGUID.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// These operations, emailing enrollment links through `mailer` when there is one.
    pub fn with_mailer(self, mailer: Option<Mailer>) -> Self {
        Self { mailer, ..self }
    }

    /// Creates a user. The first user also brings the first session signing key, so that
    /// gateways hold it long before any session signed with it exists.
    pub async fn create(&self, user_id: &str, actor: &str) -> Result<UserRecord, UserError> {
        check_user_id(user_id)?;
        self.sessions.ensure_signing_key().await?;
        match self
            .store
            .create_user(user_id, rand::random(), actor)
            .await?
        {
            UserCreated::Created(user) => Ok(user),
            UserCreated::AlreadyExists => Err(UserError::AlreadyExists(format!(
                "user {user_id:?} already exists"
            ))),
        }
    }

    /// Enables or disables a user; a disable revokes every session issued until now and voids
    /// every open enrollment link of theirs (enabling again revives none).
    pub async fn set_enabled(
        &self,
        user_id: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<UserChanged, UserError> {
        check_user_id(user_id)?;
        self.store
            .set_user_enabled(user_id, enabled, self.sessions.lifetime_ms(), actor)
            .await?
            .ok_or_else(|| unknown_user(user_id))
    }

    /// Issues a one-time enrollment link for the user, working for `lifetime` (None: 24 h).
    pub async fn create_enrollment(
        &self,
        user_id: &str,
        lifetime: Option<Duration>,
        actor: &str,
    ) -> Result<IssuedEnrollment, UserError> {
        check_user_id(user_id)?;
        let lifetime = lifetime.unwrap_or(DEFAULT_ENROLLMENT_LIFETIME);
        if lifetime.is_zero() || lifetime > MAX_ENROLLMENT_LIFETIME {
            return Err(UserError::InvalidArgument(format!(
                "an enrollment link must expire within {} days",
                MAX_ENROLLMENT_LIFETIME.as_secs() / 86_400
            )));
        }
        let token = ids::enrollment_token();
        let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        let enrollment = NewEnrollment {
            enrollment_id: ids::enrollment_id(),
            token_hash: ids::token_hash(&token),
            user_id: user_id.to_owned(),
            expires_unix_ms: now_unix_ms().saturating_add(lifetime_ms),
        };
        match self.store.create_enrollment(enrollment, actor).await? {
            EnrollmentCreated::Created(record) => Ok(IssuedEnrollment {
                link: format!("{}/#enroll={token}", self.origin),
                enrollment_id: record.enrollment_id,
                user_id: record.user_id,
                expires_unix_ms: record.expires_unix_ms,
            }),
            EnrollmentCreated::UnknownUser => Err(unknown_user(user_id)),
            EnrollmentCreated::UserDisabled => Err(UserError::FailedPrecondition(format!(
                "user {user_id:?} is disabled; enable them first"
            ))),
        }
    }

    /// Issues a one-time enrollment link for the user and emails it to `email` instead of
    /// returning it. Refused before any link exists when email is not configured or the
    /// address is malformed. When the relay does not take the message, the link is revoked
    /// (audited as `enrollment.void`, reason `email_failed`) and the error says so: the token
    /// has then been nowhere but in this process.
    pub async fn email_enrollment(
        &self,
        user_id: &str,
        lifetime: Option<Duration>,
        email: &str,
        actor: &str,
    ) -> Result<EmailedEnrollment, UserError> {
        let Some(mailer) = self.mailer.clone() else {
            return Err(UserError::FailedPrecondition(
                "this control plane sends no email: set smtp_url, smtp_from and org_name in \
                 its config to email enrollment links"
                    .into(),
            ));
        };
        let to = mail::recipient(email).map_err(UserError::InvalidArgument)?;
        let issued = self.create_enrollment(user_id, lifetime, actor).await?;
        // Sending and, on failure, revoking run to the end even when the caller goes away
        // meanwhile: the link ends up emailed, or revoked, never open and undelivered.
        let store = std::sync::Arc::clone(&self.store);
        let actor = actor.to_owned();
        let delivery = tokio::spawn(async move {
            let mail = EnrollmentMail {
                org_name: mailer.org_name(),
                from: mailer.from(),
                to: &to,
                user_id: &issued.user_id,
                link: &issued.link,
                expires_unix_ms: issued.expires_unix_ms,
            };
            let sent = match mail.message() {
                Ok(message) => mailer.send(message).await,
                Err(error) => Err(error),
            };
            let error = match sent {
                Ok(()) => {
                    return Ok(EmailedEnrollment {
                        enrollment_id: issued.enrollment_id,
                        user_id: issued.user_id,
                        emailed_to: to.to_string(),
                        expires_unix_ms: issued.expires_unix_ms,
                    });
                }
                Err(error) => error,
            };
            let (id, user_id) = (&issued.enrollment_id, &issued.user_id);
            tracing::warn!(%user_id, enrollment_id = %id, relay = %mailer.relay(), %error, "enrollment email not sent; revoking the link");
            let failed =
                format!("could not email the enrollment link for {user_id:?} to {to}: {error}");
            match store
                .void_enrollment(id, VoidReason::EmailFailed, &actor)
                .await
            {
                Ok(Some(_)) => Err(UserError::EmailNotSent(format!(
                    "{failed}; the link ({id}) was revoked and cannot be used"
                ))),
                outcome => {
                    let store_error = outcome.err().map(|error| error.to_string());
                    tracing::error!(enrollment_id = %id, ?store_error, "could not revoke the link whose email failed");
                    Err(UserError::EmailNotSent(format!(
                        "{failed}; revoking the link failed too: revoke it with `keygate \
                         enrollments revoke {id}` (nobody was shown it)"
                    )))
                }
            }
        });
        delivery.await.unwrap_or_else(|error| {
            Err(UserError::EmailNotSent(format!(
                "the enrollment email task failed ({error}); see `keygate enrollments list`"
            )))
        })
    }

    /// The user's enrollment links in every state, newest first.
    pub async fn list_enrollments(
        &self,
        user_id: &str,
    ) -> Result<Vec<EnrollmentRecord>, UserError> {
        check_user_id(user_id)?;
        if self.store.get_user(user_id).await?.is_none() {
            return Err(unknown_user(user_id));
        }
        Ok(self.store.list_enrollments(user_id).await?)
    }

    /// Revokes an open enrollment link; one used, expired, revoked or voided already is left
    /// as it is (`changed` false), which is not an error.
    pub async fn revoke_enrollment(
        &self,
        enrollment_id: &str,
        actor: &str,
    ) -> Result<EnrollmentRevoked, UserError> {
        let chars = enrollment_id.chars().count();
        if chars == 0
            || chars > MAX_ENROLLMENT_ID_CHARS
            || enrollment_id.chars().any(char::is_control)
        {
            return Err(UserError::InvalidArgument(format!(
                "an enrollment id is 1 to {MAX_ENROLLMENT_ID_CHARS} characters without control \
                 characters, like enr_…"
            )));
        }
        self.store
            .revoke_enrollment(enrollment_id, actor)
            .await?
            .ok_or_else(|| {
                UserError::NotFound(format!("enrollment link {enrollment_id:?} not found"))
            })
    }

    /// The user's passkeys, oldest first.
    pub async fn list_passkeys(&self, user_id: &str) -> Result<Vec<PasskeyRecord>, UserError> {
        check_user_id(user_id)?;
        if self.store.get_user(user_id).await?.is_none() {
            return Err(unknown_user(user_id));
        }
        Ok(self.store.list_passkeys(user_id).await?)
    }

    /// Deletes one of the user's passkeys and revokes every session it minted (also the last
    /// one: an operator may lock a user out, e.g. after a lost device).
    pub async fn revoke_passkey(
        &self,
        user_id: &str,
        passkey_id: &str,
        actor: &str,
    ) -> Result<Revision, UserError> {
        check_user_id(user_id)?;
        let removal = PasskeyRemoval {
            user_id: user_id.to_owned(),
            passkey_id: passkey_id.to_owned(),
            prune_after_unix_ms: now_unix_ms().saturating_add(self.sessions.lifetime_ms()),
            keep_last: false,
            action: "passkey.revoke",
        };
        match self.store.remove_passkey(removal, actor).await? {
            PasskeyRemoved::Removed { revision } => Ok(revision),
            PasskeyRemoved::NotFound | PasskeyRemoved::LastPasskey => Err(UserError::NotFound(
                format!("user {user_id:?} has no passkey {passkey_id:?}"),
            )),
        }
    }

    /// Gives one of the user's passkeys a new device name (1 to 64 characters); the passkey as
    /// it is now.
    pub async fn rename_passkey(
        &self,
        user_id: &str,
        passkey_id: &str,
        name: &str,
        actor: &str,
    ) -> Result<PasskeyRecord, UserError> {
        check_user_id(user_id)?;
        let name = clean_new_passkey_name(name).map_err(UserError::InvalidArgument)?;
        let rename = PasskeyRename {
            user_id: user_id.to_owned(),
            passkey_id: passkey_id.to_owned(),
            name,
            action: "passkey.rename",
        };
        match self.store.rename_passkey(rename, actor).await? {
            PasskeyRenamed::Renamed(passkey) => Ok(*passkey),
            PasskeyRenamed::NotFound => Err(UserError::NotFound(format!(
                "user {user_id:?} has no passkey {passkey_id:?}"
            ))),
        }
    }

    /// The stored passkeys the policy would refuse now, each with the rule it breaks: `user_id`'s
    /// all at once, or every user's a page at a time (a scan of at most
    /// [`VIOLATIONS_SCAN_PAGE`] passkeys after the passkey id `after`; `next` continues it).
    pub async fn policy_violations(
        &self,
        user_id: Option<&str>,
        after: Option<&str>,
    ) -> Result<ViolationsPage, UserError> {
        let (scanned, next) = match user_id {
            Some(user_id) => (self.list_passkeys(user_id).await?, None),
            None => {
                let page = self
                    .store
                    .passkeys_page(after, VIOLATIONS_SCAN_PAGE)
                    .await?;
                let next = (page.len() == VIOLATIONS_SCAN_PAGE)
                    .then(|| page.last().map(|passkey| passkey.passkey_id.clone()))
                    .flatten();
                (page, next)
            }
        };
        let violators = scanned
            .into_iter()
            .filter_map(|passkey| {
                let judged = self.policy.judge(passkey.aaguid, passkey.backup_eligible);
                judged
                    .err()
                    .map(|violation| PolicyViolator { passkey, violation })
            })
            .collect();
        Ok(ViolationsPage { violators, next })
    }

    /// Revokes every session of the user issued until now ("sign out everywhere").
    pub async fn revoke_sessions(
        &self,
        user_id: &str,
        actor: &str,
    ) -> Result<UserChanged, UserError> {
        check_user_id(user_id)?;
        self.store
            .revoke_user_sessions(user_id, self.sessions.lifetime_ms(), actor)
            .await?
            .ok_or_else(|| unknown_user(user_id))
    }

    /// Makes a new session signing key current; the old one keeps verifying until its
    /// tokens have expired.
    pub async fn rotate_signing_key(&self, actor: &str) -> Result<Rotated, UserError> {
        Ok(self.sessions.rotate(actor).await?)
    }

    /// Every session signing key still kept (current, retired, revoked), newest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, UserError> {
        Ok(self.sessions.signing_keys().await?)
    }

    /// Revokes a session signing key: every session it signed is refused (REVOKED). Revoking
    /// the current key makes a new one current in the same transaction. A key revoked before
    /// is [`SigningKeyRevoked::AlreadyRevoked`], not an error; an unknown one is `NotFound`.
    pub async fn revoke_signing_key(
        &self,
        key_id: &str,
        actor: &str,
    ) -> Result<SigningKeyRevoked, UserError> {
        let chars = key_id.chars().count();
        if chars == 0 || chars > MAX_SIGNING_KEY_ID_CHARS || key_id.chars().any(char::is_control) {
            return Err(UserError::InvalidArgument(format!(
                "a signing key id is 1 to {MAX_SIGNING_KEY_ID_CHARS} characters without control \
                 characters, like sk_… (see `keygate signing-keys list`)"
            )));
        }
        match self.sessions.revoke_signing_key(key_id, actor).await? {
            SigningKeyRevoked::NotFound => Err(UserError::NotFound(format!(
                "signing key {key_id:?} not found (see `keygate signing-keys list`)"
            ))),
            outcome => Ok(outcome),
        }
    }
}

fn unknown_user(user_id: &str) -> UserError {
    UserError::NotFound(format!("user {user_id:?} not found"))
}
