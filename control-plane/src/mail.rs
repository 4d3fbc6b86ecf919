//! Email: the SMTP relay that enrollment links are sent through (`keygate enrollments create
//! --email`), with lettre over tokio and rustls.
//!
//! [`SmtpSettings`] is what the configuration says (`smtp_url`, `smtp_from`, `org_name`, and
//! the credentials from the environment), checked once at start; [`Mailer`] sends one message
//! per SMTP session. `smtp://` upgrades with STARTTLS when the relay offers it, and insists on
//! it when there are credentials (or `?tls=required`), so a password never crosses the
//! network in clear; `smtps://` is TLS from the first byte.
//!
//! - `enrollment` — the message itself: plain text and HTML naming the organisation, the link
//!   and its expiry.

pub mod enrollment;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{ConfigError, ControlPlaneConfig};

/// Port of `smtp://` without one: message submission (RFC 6409).
const SUBMISSION_PORT: u16 = 587;
/// Port of `smtps://` without one: submission over implicit TLS (RFC 8314).
const SUBMISSIONS_PORT: u16 = 465;
/// Longest one step of an SMTP session (connect, a reply) may take before the send fails.
const SMTP_STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a whole send may take: well within the operator CLI's 60 s per call, so a send that
/// fails is reported (and its link revoked) before the caller gives up.
const SEND_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest `org_name`, in characters.
pub const MAX_ORG_NAME_CHARS: usize = 100;
/// Longest recipient address, in bytes (RFC 5321's path limit less its angle brackets).
const MAX_ADDRESS_BYTES: usize = 254;

/// User and password for the relay. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    pub user: String,
    password: String,
}

impl SmtpCredentials {
    pub fn new(user: String, password: String) -> Self {
        Self { user, password }
    }
}

impl fmt::Debug for SmtpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: STARTTLS when the relay offers it, plain text otherwise.
    Opportunistic,
    /// `smtp://` with credentials or `?tls=required`: STARTTLS or no message.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// The email settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub from: Mailbox,
    pub org_name: String,
    pub credentials: Option<SmtpCredentials>,
}

impl SmtpSettings {
    /// The settings of `config`: `None` when it has no `smtp_url` (email is off). Never echoes
    /// the URL, which could hold a password.
    pub fn from_config(config: &ControlPlaneConfig) -> Result<Option<Self>, ConfigError> {
        let error = |message: &str| ConfigError::Smtp(message.to_owned());
        let Some(url) = &config.smtp_url else {
            if config.smtp_from.is_some() {
                return Err(error("smtp_from is set but smtp_url is not"));
            }
            if config.smtp_credentials.is_some() {
                return Err(error(
                    "KEYGATE_SMTP_USER and KEYGATE_SMTP_PASSWORD are set but smtp_url is not",
                ));
            }
            return Ok(None);
        };
        let url = url::Url::parse(url)
            .map_err(|_| error("smtp_url must be smtp://host[:port] or smtps://host[:port]"))?;
        let (port, mut security) = match url.scheme() {
            "smtp" => (SUBMISSION_PORT, SmtpSecurity::Opportunistic),
            "smtps" => (SUBMISSIONS_PORT, SmtpSecurity::Implicit),
            _ => return Err(error("smtp_url must start with smtp:// or smtps://")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(error(
                "smtp_url must not hold a user or password: set KEYGATE_SMTP_USER and \
                 KEYGATE_SMTP_PASSWORD instead",
            ));
        }
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| error("smtp_url has no host"))?;
        // An IPv6 literal is bracketed in a URL, not in a socket address or a TLS name.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(error(
                "smtp_url must be scheme://host[:port], without a path",
            ));
        }
        match (url.query(), security) {
            (None, _) => {}
            (Some("tls=required"), SmtpSecurity::Opportunistic) => {
                security = SmtpSecurity::StartTls;
            }
            _ => {
                return Err(error(
                    "the only option smtp_url takes is ?tls=required, and only with smtp://",
                ));
            }
        }
        if config.smtp_credentials.is_some() && security == SmtpSecurity::Opportunistic {
            security = SmtpSecurity::StartTls;
        }
        let from = config
            .smtp_from
            .as_deref()
            .ok_or_else(|| error("smtp_url needs smtp_from, the sender's address"))?;
        let from = Mailbox::from_str(from).map_err(|_| {
            error("smtp_from must be an address such as keygate@example.com or Name <keygate@example.com>")
        })?;
        let org_name = config
            .org_name
            .as_deref()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| error("smtp_url needs org_name, the organisation the emails name"))?;
        if org_name.chars().count() > MAX_ORG_NAME_CHARS || org_name.chars().any(char::is_control) {
            return Err(ConfigError::Smtp(format!(
                "org_name must be at most {MAX_ORG_NAME_CHARS} characters without control \
                 characters"
            )));
        }
        Ok(Some(Self {
            host,
            port: url.port().unwrap_or(port),
            security,
            from,
            org_name: org_name.to_owned(),
            credentials: config.smtp_credentials.clone(),
        }))
    }
}

/// A recipient address (`name@example.com`, no display name), or why it is not one.
pub fn recipient(text: &str) -> Result<Address, String> {
    let text = text.trim();
    if text.len() > MAX_ADDRESS_BYTES {
        return Err(format!(
            "an email address is at most {MAX_ADDRESS_BYTES} bytes"
        ));
    }
    Address::from_str(text).map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        format!("{shown:?} is not an email address such as name@example.com")
    })
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message could not be put together (a header value lettre refused).
    #[error("cannot build the message: {0}")]
    Build(String),
    /// The relay could not be reached, refused the message, or the session broke.
    #[error("the SMTP relay {relay} did not take the message: {reason}")]
    Send { relay: String, reason: String },
}

/// Sends messages through the configured relay, one SMTP session each.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for errors and logs.
    relay: String,
    from: Mailbox,
    org_name: String,
}

impl Mailer {
    /// A mailer for `settings`; fails if TLS cannot be set up for the relay's name.
    pub fn new(settings: SmtpSettings) -> Result<Self, ConfigError> {
        let tls = || {
            TlsParameters::new(settings.host.clone()).map_err(|error| {
                ConfigError::Smtp(format!("cannot set up TLS for the SMTP relay: {error}"))
            })
        };
        let tls = match settings.security {
            SmtpSecurity::Opportunistic => Tls::Opportunistic(tls()?),
            SmtpSecurity::StartTls => Tls::Required(tls()?),
            SmtpSecurity::Implicit => Tls::Wrapper(tls()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(SMTP_STEP_TIMEOUT));
        if let Some(credentials) = settings.credentials {
            builder = builder.credentials(Credentials::new(credentials.user, credentials.password));
        }
        let relay = if settings.host.contains(':') {
            format!("[{}]:{}", settings.host, settings.port)
        } else {
            format!("{}:{}", settings.host, settings.port)
        };
        tracing::info!(%relay, security = ?settings.security, "enrollment links are emailed through an SMTP relay");
        Ok(Self {
            transport: builder.build(),
            relay,
            from: settings.from,
            org_name: settings.org_name,
        })
    }

    /// The mailer of `config`, or `None` when it sends no email.
    pub fn from_config(config: &ControlPlaneConfig) -> Result<Option<Self>, ConfigError> {
        SmtpSettings::from_config(config)?
            .map(Self::new)
            .transpose()
    }

    /// The organisation the messages name.
    pub fn org_name(&self) -> &str {
        &self.org_name
    }

    /// Where messages go, `host:port`.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// The sender of every message.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Sends `message` (built with [`Mailer::from`] as its sender); returns once the relay has
    /// accepted it.
    pub async fn send(&self, message: Message) -> Result<(), MailError> {
        let failed = |reason: String| MailError::Send {
            relay: self.relay.clone(),
            reason,
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(failed(error.to_string())),
            Err(_) => Err(failed(format!(
                "no answer within {}s",
                SEND_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: &str) -> ControlPlaneConfig {
        ControlPlaneConfig {
            smtp_url: Some(url.into()),
            smtp_from: Some("Example IT <it@example.com>".into()),
            org_name: Some(" Example Corp ".into()),
            ..ControlPlaneConfig::default()
        }
    }

    fn settings(config: &ControlPlaneConfig) -> Result<SmtpSettings, String> {
        match SmtpSettings::from_config(config) {
            Ok(Some(settings)) => Ok(settings),
            Ok(None) => Err("off".into()),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn no_smtp_url_means_no_email_and_its_companions_alone_are_mistakes() {
        let off = ControlPlaneConfig::default();
        assert_eq!(SmtpSettings::from_config(&off), Ok(None));
        let from_alone = ControlPlaneConfig {
            smtp_from: Some("it@example.com".into()),
            ..ControlPlaneConfig::default()
        };
        assert!(
            settings(&from_alone)
                .unwrap_err()
                .contains("smtp_url is not")
        );
        let credentials_alone = ControlPlaneConfig {
            smtp_credentials: Some(SmtpCredentials::new("u".into(), "p".into())),
            ..ControlPlaneConfig::default()
        };
        assert!(
            settings(&credentials_alone)
                .unwrap_err()
                .contains("KEYGATE_SMTP_USER")
        );
    }

    #[test]
    fn schemes_ports_and_tls() {
        let plain = settings(&config("smtp://mail.example.com")).unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.security),
            ("mail.example.com", 587, SmtpSecurity::Opportunistic)
        );
        assert_eq!(plain.org_name, "Example Corp");
        assert_eq!(plain.from.email.to_string(), "it@example.com");
        let required = settings(&config("smtp://127.0.0.1:2525?tls=required")).unwrap();
        assert_eq!(
            (required.host.as_str(), required.port, required.security),
            ("127.0.0.1", 2525, SmtpSecurity::StartTls)
        );
        let implicit = settings(&config("smtps://[::1]")).unwrap();
        assert_eq!(
            (implicit.host.as_str(), implicit.port, implicit.security),
            ("::1", 465, SmtpSecurity::Implicit)
        );
        let mut with_password = config("smtp://mail.example.com:25");
        with_password.smtp_credentials =
            Some(SmtpCredentials::new("keygate".into(), "hunter2".into()));
        let with_password = settings(&with_password).unwrap();
        assert_eq!(
            with_password.security,
            SmtpSecurity::StartTls,
            "a password never goes out in clear"
        );
        assert!(!format!("{with_password:?}").contains("hunter2"));
        let mailer = Mailer::new(with_password).unwrap();
        assert_eq!(mailer.relay(), "mail.example.com:25");
    }

    #[test]
    fn bad_settings_are_named_and_the_url_is_never_echoed() {
        for (url, says) in [
            ("mail.example.com:587", "smtp://"),
            ("http://mail.example.com", "smtp:// or smtps://"),
            (
                "smtp://keygate:s3cret@mail.example.com",
                "KEYGATE_SMTP_USER",
            ),
            ("smtp://mail.example.com/inbox", "without a path"),
            ("smtps://mail.example.com?tls=required", "?tls=required"),
            ("smtp://mail.example.com?tls=none", "?tls=required"),
            ("smtp://", "host"),
        ] {
            let error = settings(&config(url)).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.starts_with("email settings: "), "{error}");
        }
        let mut no_from = config("smtp://mail.example.com");
        no_from.smtp_from = None;
        assert!(settings(&no_from).unwrap_err().contains("smtp_from"));
        let mut bad_from = config("smtp://mail.example.com");
        bad_from.smtp_from = Some("not an address".into());
        assert!(settings(&bad_from).unwrap_err().contains("smtp_from"));
        let mut no_org = config("smtp://mail.example.com");
        no_org.org_name = Some("  ".into());
        assert!(settings(&no_org).unwrap_err().contains("org_name"));
        let mut long_org = config("smtp://mail.example.com");
        long_org.org_name = Some("x".repeat(101));
        assert!(settings(&long_org).unwrap_err().contains("100 characters"));
        let mut control = config("smtp://mail.example.com");
        control.org_name = Some("Evil\r\nBcc: x@example.com".into());
        assert!(settings(&control).unwrap_err().contains("control"));
    }

    #[test]
    fn the_file_sets_the_relay_but_never_its_credentials() {
        let parsed: ControlPlaneConfig = toml::from_str(
            "smtp_url = \"smtp://mail.example.com:587\"\n\
             smtp_from = \"it@example.com\"\n\
             org_name = \"Example Corp\"",
        )
        .unwrap();
        assert_eq!(settings(&parsed).unwrap().port, 587);
        for key in ["smtp_credentials", "smtp_password", "smtp_user"] {
            let error = toml::from_str::<ControlPlaneConfig>(&format!("{key} = \"x\""))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{error}");
        }
        let mut config = config("smtp://mail.example.com");
        config.smtp_credentials = Some(SmtpCredentials::new("keygate".into(), "hunter2".into()));
        let printed = format!("{config:?}");
        assert!(printed.contains("keygate"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        config.smtp_url = Some("smtp://u:hunter2@mail.example.com".into());
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn recipients_are_bare_addresses() {
        assert_eq!(
            recipient(" a@example.com ").unwrap().to_string(),
            "a@example.com"
        );
        for bad in [
            "",
            "alice",
            "a@",
            "@example.com",
            "Alice <a@example.com>",
            "a b@x.y",
        ] {
            let error = recipient(bad).unwrap_err();
            assert!(error.contains("not an email address"), "{bad}: {error}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(recipient(&long).unwrap_err().contains("at most"));
    }
}
