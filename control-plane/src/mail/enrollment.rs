//! The enrollment email: a multipart message (plain text and HTML alternatives) that names the
//! organisation, the user it is for, the one-time link and when the link expires. The link
//! stands on a line of its own in the text part, so mail clients make it clickable whole.

use std::time::{Duration, UNIX_EPOCH};

use lettre::Address;
use lettre::message::{Mailbox, Message, MultiPart};

use super::MailError;

/// What an enrollment email says.
pub struct EnrollmentMail<'a> {
    /// Names the sender's organisation (`org_name`).
    pub org_name: &'a str,
    pub from: &'a Mailbox,
    pub to: &'a Address,
    /// The user id the passkey is for.
    pub user_id: &'a str,
    /// `{rp_origin}/#enroll=TOKEN`.
    pub link: &'a str,
    pub expires_unix_ms: i64,
}

impl EnrollmentMail<'_> {
    /// The subject line.
    pub fn subject(&self) -> String {
        format!("Set up your passkey for {}", self.org_name)
    }

    /// The plain-text part.
    pub fn text(&self) -> String {
        let Self {
            org_name,
            user_id,
            link,
            ..
        } = self;
        let expires = expiry(self.expires_unix_ms);
        format!(
            "{org_name} invites you to set up a passkey for the account {user_id}.\n\
             \n\
             A passkey signs you in with your device's screen lock (fingerprint, face or PIN),\n\
             with no password to remember. Open this link on the device you want to use:\n\
             \n\
             {link}\n\
             \n\
             The link works once, and only until {expires}. If you did not expect this\n\
             message, ignore it: nothing happens unless the link is opened.\n\
             \n\
             -- \n\
             {org_name}\n"
        )
    }

    /// The HTML part: the same words, every value escaped.
    pub fn html(&self) -> String {
        let org_name = escape(self.org_name);
        let user_id = escape(self.user_id);
        let link = escape(self.link);
        let expires = escape(&expiry(self.expires_unix_ms));
        format!(
            "<!DOCTYPE html>\n\
             <html><head><meta charset=\"utf-8\"><title>Set up your passkey for {org_name}</title></head>\n\
             <body style=\"font-family: sans-serif; line-height: 1.5\">\n\
             <p><strong>{org_name}</strong> invites you to set up a passkey for the account \
             <strong>{user_id}</strong>.</p>\n\
             <p>A passkey signs you in with your device's screen lock (fingerprint, face or PIN), \
             with no password to remember. Open this link on the device you want to use:</p>\n\
             <p><a href=\"{link}\">Set up my passkey</a></p>\n\
             <p style=\"word-break: break-all\">{link}</p>\n\
             <p>The link works once, and only until {expires}. If you did not expect this \
             message, ignore it: nothing happens unless the link is opened.</p>\n\
             <p>{org_name}</p>\n\
             </body></html>\n"
        )
    }

    /// The whole message, with a Message-ID of its own in the sender's domain (relays and
    /// spam filters look for one).
    pub fn message(&self) -> Result<Message, MailError> {
        let message_id = format!(
            "<{}@{}>",
            crate::ids::random_id("enrollment"),
            self.from.email.domain()
        );
        Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(Mailbox::new(None, self.to.clone()))
            .subject(self.subject())
            .multipart(MultiPart::alternative_plain_html(self.text(), self.html()))
            .map_err(|error| MailError::Build(error.to_string()))
    }
}

/// `2026-12-02 15:04 UTC`: a time a person reads.
fn expiry(expires_unix_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(expires_unix_ms).unwrap_or(0));
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    // "2026-12-02T15:04:05Z" → "2026-12-02 15:04 UTC"
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(minute)) => format!("{day} {minute} UTC"),
        _ => rfc3339,
    }
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn both_parts_name_the_organisation_the_link_and_its_expiry() {
        let from = Mailbox::from_str("IT <it@example.com>").unwrap();
        let to = Address::from_str("alice@example.com").unwrap();
        let link = "https://id.example.com/#enroll=abc_DEF-123";
        let mail = EnrollmentMail {
            org_name: "Example & Sons <Ltd>",
            from: &from,
            to: &to,
            user_id: "alice",
            link,
            // 2026-12-02T15:04:05Z
            expires_unix_ms: 1_796_223_845_000,
        };
        assert_eq!(
            mail.subject(),
            "Set up your passkey for Example & Sons <Ltd>"
        );
        let text = mail.text();
        assert!(text.contains("Example & Sons <Ltd> invites you"), "{text}");
        assert!(text.lines().any(|line| line == link), "{text}");
        assert!(text.contains("until 2026-12-02 15:04 UTC"), "{text}");
        let html = mail.html();
        assert!(
            html.contains("<strong>Example &amp; Sons &lt;Ltd&gt;</strong>"),
            "{html}"
        );
        assert!(html.contains(&format!("<a href=\"{link}\">")), "{html}");
        assert!(html.contains("2026-12-02 15:04 UTC"), "{html}");
        assert!(!html.contains("<Ltd>"), "escaped");
        let message = String::from_utf8(mail.message().unwrap().formatted()).unwrap();
        assert!(message.contains("multipart/alternative"), "{message}");
        assert!(message.contains("text/plain"), "{message}");
        assert!(message.contains("text/html"), "{message}");
        assert!(message.contains("To: alice@example.com"), "{message}");
        assert!(message.contains("Message-ID: <enrollment_"), "{message}");
        assert!(message.contains("@example.com>"), "{message}");
    }
}
