//! The passkey policy (DESIGN.md, "Passkeys beyond the basics"): which authenticator models
//! (by AAGUID) and which kinds of passkeys (device-bound or synced) may register, from
//! `[passkey_policy]` in the control plane's TOML:
//!
//! ```toml
//! [passkey_policy]
//! mode = "block"                                        # or "allow": only these may register
//! aaguids = ["ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4"]
//! backup = "device_bound"                               # or "synced", or "any" (the default)
//! ```
//!
//! A registration that breaks it is refused before anything is stored; the same check over the
//! stored passkeys lists the ones a new policy would refuse (`keygate passkeys list
//! --policy-violations`). "Synced" is the authenticator's backup-eligible (BE) flag: a passkey
//! that may be backed up is a multi-device one, whether or not it is backed up (BS) yet.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::providers::{aaguid_text, parse_aaguid};

/// The policy. The default refuses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasskeyPolicy {
    /// `"allow"`: only authenticators whose AAGUID is in `aaguids` may register; `"block"`:
    /// those may not. Required when `aaguids` is set. Default none: no AAGUID rule.
    pub mode: Option<AaguidMode>,
    /// The AAGUIDs (UUIDs, as in the community AAGUID list) `mode` applies to. Default empty.
    pub aaguids: Vec<Aaguid>,
    /// `"device_bound"` refuses passkeys that may be synced (backup eligible), `"synced"`
    /// refuses those that may not; `"any"` refuses neither. Default `"any"`.
    pub backup: BackupRule,
}

/// How `aaguids` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AaguidMode {
    Allow,
    Block,
}

/// Which passkeys may register by whether they can be synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupRule {
    #[default]
    Any,
    DeviceBound,
    Synced,
}

/// An AAGUID in the policy, written as a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aaguid(pub [u8; 16]);

impl<'de> Deserialize<'de> for Aaguid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_aaguid(&text).map(Self).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not an AAGUID (a UUID such as \"ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4\")"
            ))
        })
    }
}

/// Which rule a passkey breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// `mode = "allow"` and its AAGUID is not listed (or was never recorded).
    NotAllowed,
    /// `mode = "block"` and its AAGUID is listed.
    Blocked,
    /// `backup = "device_bound"` and it may be synced.
    Synced,
    /// `backup = "synced"` and it may not be.
    DeviceBound,
}

impl PasskeyPolicy {
    /// A policy that cannot work: `aaguids` without a `mode`, or `mode = "allow"` with no
    /// AAGUIDs (nothing could ever register).
    pub fn check(&self) -> Result<(), String> {
        match (self.mode, self.aaguids.is_empty()) {
            (None, false) => Err(
                "passkey_policy.aaguids needs passkey_policy.mode = \"allow\" or \"block\"".into(),
            ),
            (Some(AaguidMode::Allow), true) => Err(
                "passkey_policy.mode = \"allow\" with no aaguids would refuse every passkey; \
                 list the AAGUIDs to allow"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// Whether a passkey of this AAGUID (`None`: not recorded) and backup eligibility may be
    /// registered; the first rule it breaks, if any.
    pub fn judge(&self, aaguid: Option<[u8; 16]>, backup_eligible: bool) -> Result<(), Violation> {
        let listed = aaguid.is_some_and(|aaguid| self.aaguids.contains(&Aaguid(aaguid)));
        match self.mode {
            Some(AaguidMode::Allow) if !listed => return Err(Violation::NotAllowed),
            Some(AaguidMode::Block) if listed => return Err(Violation::Blocked),
            _ => {}
        }
        match self.backup {
            BackupRule::DeviceBound if backup_eligible => Err(Violation::Synced),
            BackupRule::Synced if !backup_eligible => Err(Violation::DeviceBound),
            _ => Ok(()),
        }
    }
}

impl Violation {
    /// The rule, as the config writes it.
    pub fn rule(self) -> &'static str {
        match self {
            Self::NotAllowed => "mode = \"allow\"",
            Self::Blocked => "mode = \"block\"",
            Self::Synced => "backup = \"device_bound\"",
            Self::DeviceBound => "backup = \"synced\"",
        }
    }

    /// What a person reads: the rule and how this passkey (of `provider`, AAGUID `aaguid`)
    /// breaks it.
    pub fn explain(self, provider: &str, aaguid: Option<[u8; 16]>) -> Explained<'_> {
        Explained {
            violation: self,
            provider,
            aaguid,
        }
    }
}

/// A [`Violation`] with the passkey it is about, for messages.
pub struct Explained<'a> {
    violation: Violation,
    provider: &'a str,
    aaguid: Option<[u8; 16]>,
}

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = self.violation.rule();
        let authenticator = match self.aaguid {
            Some(aaguid) => format!("{} (AAGUID {})", self.provider, aaguid_text(aaguid)),
            None => format!("{} (AAGUID not recorded)", self.provider),
        };
        match self.violation {
            Violation::NotAllowed => write!(
                f,
                "passkey_policy {rule} does not list this authenticator: {authenticator}"
            ),
            Violation::Blocked => write!(
                f,
                "passkey_policy {rule} lists this authenticator: {authenticator}"
            ),
            Violation::Synced => write!(
                f,
                "passkey_policy {rule} refuses passkeys that can be synced, and this one can \
                 ({authenticator})"
            ),
            Violation::DeviceBound => write!(
                f,
                "passkey_policy {rule} refuses device-bound passkeys, and this one is \
                 ({authenticator})"
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOGLE: [u8; 16] = [
        0xea, 0x9b, 0x8d, 0x66, 0x4d, 0x01, 0x1d, 0x21, 0x3c, 0xe4, 0xb6, 0xb4, 0x8c, 0xb5, 0x75,
        0xd4,
    ];

    fn policy(toml_text: &str) -> PasskeyPolicy {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_default_refuses_nothing() {
        let open = PasskeyPolicy::default();
        assert_eq!(open.check(), Ok(()));
        for aaguid in [None, Some([0; 16]), Some(GOOGLE)] {
            for synced in [false, true] {
                assert_eq!(open.judge(aaguid, synced), Ok(()));
            }
        }
    }

    #[test]
    fn allow_admits_only_listed_aaguids_and_block_refuses_them() {
        let allow =
            policy("mode = \"allow\"\naaguids = [\"EA9B8D66-4D01-1D21-3CE4-B6B48CB575D4\"]");
        assert_eq!(allow.check(), Ok(()));
        assert_eq!(allow.judge(Some(GOOGLE), true), Ok(()));
        assert_eq!(allow.judge(Some([0; 16]), true), Err(Violation::NotAllowed));
        assert_eq!(allow.judge(None, true), Err(Violation::NotAllowed));

        let block =
            policy("mode = \"block\"\naaguids = [\"ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4\"]");
        assert_eq!(block.judge(Some(GOOGLE), false), Err(Violation::Blocked));
        assert_eq!(block.judge(Some([0; 16]), false), Ok(()));
        assert_eq!(block.judge(None, false), Ok(()));
    }

    #[test]
    fn backup_rules_read_the_backup_eligible_flag() {
        let bound = policy("backup = \"device_bound\"");
        assert_eq!(bound.judge(Some(GOOGLE), true), Err(Violation::Synced));
        assert_eq!(bound.judge(Some(GOOGLE), false), Ok(()));
        let synced = policy("backup = \"synced\"");
        assert_eq!(synced.judge(None, false), Err(Violation::DeviceBound));
        assert_eq!(synced.judge(None, true), Ok(()));
        // The AAGUID rule is reported first.
        let both = policy(
            "mode = \"block\"\naaguids = [\"ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4\"]\nbackup = \"device_bound\"",
        );
        assert_eq!(both.judge(Some(GOOGLE), true), Err(Violation::Blocked));
    }

    #[test]
    fn a_policy_that_cannot_work_is_refused_clearly() {
        let no_mode = policy("aaguids = [\"ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4\"]");
        assert!(
            no_mode
                .check()
                .unwrap_err()
                .contains("needs passkey_policy.mode")
        );
        let allow_none = policy("mode = \"allow\"");
        assert!(
            allow_none
                .check()
                .unwrap_err()
                .contains("would refuse every passkey")
        );
        assert_eq!(policy("mode = \"block\"").check(), Ok(()));

        let bad = |text: &str| {
            toml::from_str::<PasskeyPolicy>(text)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("mode = \"deny\"").contains("unknown variant `deny`"));
        assert!(bad("backup = \"cloud\"").contains("unknown variant `cloud`"));
        assert!(
            bad("mode = \"block\"\naaguids = [\"google\"]").contains("\"google\" is not an AAGUID")
        );
        assert!(bad("modes = \"block\"").contains("unknown field `modes`"));
    }

    #[test]
    fn a_violation_names_its_rule_and_the_authenticator() {
        let text = Violation::Blocked
            .explain("Google Password Manager", Some(GOOGLE))
            .to_string();
        assert_eq!(
            text,
            "passkey_policy mode = \"block\" lists this authenticator: Google Password Manager \
             (AAGUID ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4)"
        );
        let text = Violation::Synced
            .explain("Unknown authenticator", None)
            .to_string();
        assert!(text.contains("backup = \"device_bound\""), "{text}");
        assert!(text.contains("AAGUID not recorded"), "{text}");
    }
}
