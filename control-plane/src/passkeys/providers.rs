//! Passkey provider names and icons by AAGUID (DESIGN.md, "Passkeys beyond the basics"): which
//! password manager or platform holds a passkey ("Google Password Manager", "iCloud Keychain",
//! "Windows Hello"), from the authenticator model's AAGUID in its registration.
//!
//! The names come from the community list (passkeydeveloper/passkey-authenticator-aaguids,
//! `aaguid.json`), vendored in `control-plane/data/aaguids.json` and compiled in; an operator's
//! file in the same format (`--aaguid-names FILE`) replaces it. The list is parsed once, at
//! start, and a file that does not parse is a startup error naming what is wrong. An AAGUID
//! that is not on the list (including the all-zero one of authenticators that keep their model
//! private, and passkeys registered before keygate recorded AAGUIDs) is "Unknown
//! authenticator"; an empty list (`{}`) makes every passkey one.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use webauthn_rs::prelude::Uuid;

use crate::config::{ConfigError, ControlPlaneConfig};

/// The provider name of a passkey whose AAGUID is not on the list.
pub const UNKNOWN_PROVIDER: &str = "Unknown authenticator";

/// The vendored list, as fetched (see `control-plane/data/README.md` for where and when).
const VENDORED: &str = include_str!("../../data/aaguids.json");

/// Longest provider name accepted from a list, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Largest icon accepted from a list (a data URI), in bytes.
const MAX_ICON_BYTES: usize = 64 * 1024;
/// Largest `--aaguid-names` file read, in bytes (the community list is about 320 KB).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// An AAGUID as the lists and the CLI write it: a lowercase hyphenated UUID.
pub fn aaguid_text(aaguid: [u8; 16]) -> String {
    Uuid::from_bytes(aaguid).hyphenated().to_string()
}

/// Parses an AAGUID written as a UUID (any case, hyphenated or not).
pub fn parse_aaguid(text: &str) -> Option<[u8; 16]> {
    Uuid::parse_str(text.trim()).ok().map(Uuid::into_bytes)
}

/// One provider: its name and icon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    /// An image as a `data:image/…;base64,…` URI, for a light background when the list has
    /// one (else its dark-background one); `None` when the list has none.
    pub icon: Option<String>,
}

/// Why a list of AAGUID names was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProvidersError(String);

/// The AAGUID → provider table.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_aaguid: HashMap<[u8; 16], Provider>,
}

/// One entry as the community list writes it (fields it may add later are ignored).
#[derive(Deserialize)]
struct Entry {
    name: String,
    #[serde(default)]
    icon_light: Option<String>,
    #[serde(default)]
    icon_dark: Option<String>,
}

impl Providers {
    /// An empty table: every passkey is "Unknown authenticator".
    pub fn empty() -> Self {
        Self::default()
    }

    /// The list the configuration names (`aaguid_names`), or the vendored one; logs which.
    pub fn load(config: &ControlPlaneConfig) -> Result<Self, ConfigError> {
        let providers = match &config.aaguid_names {
            Some(path) => Self::from_file(path),
            None => Self::vendored(),
        }
        .map_err(|error| ConfigError::AaguidNames(error.to_string()))?;
        tracing::info!(
            aaguids = providers.len(),
            file = ?config.aaguid_names,
            "passkey provider names loaded"
        );
        Ok(providers)
    }

    /// The vendored community list.
    pub fn vendored() -> Result<Self, ProvidersError> {
        Self::parse(VENDORED).map_err(|error| {
            ProvidersError(format!("the vendored AAGUID list does not parse: {error}"))
        })
    }

    /// The list in `path` (the community list's format), replacing the vendored one.
    pub fn from_file(path: &Path) -> Result<Self, ProvidersError> {
        let at = |what: String| ProvidersError(format!("{}: {what}", path.display()));
        let len = std::fs::metadata(path)
            .map_err(|error| at(error.to_string()))?
            .len();
        if len > MAX_FILE_BYTES {
            return Err(at(format!(
                "{len} bytes; an AAGUID list may be at most {MAX_FILE_BYTES}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|error| at(error.to_string()))?;
        Self::parse(&text).map_err(|error| at(error.0))
    }

    /// A list in the community format: `{"<aaguid>": {"name", "icon_light"?, "icon_dark"?}}`.
    pub fn parse(json: &str) -> Result<Self, ProvidersError> {
        let entries: HashMap<String, Entry> = serde_json::from_str(json).map_err(|error| {
            ProvidersError(format!(
                "not an AAGUID list ({{\"<aaguid>\": {{\"name\": …}}}}): {error}"
            ))
        })?;
        let mut by_aaguid = HashMap::with_capacity(entries.len());
        for (key, entry) in entries {
            let refused = |what: &str| ProvidersError(format!("entry {key:?}: {what}"));
            let aaguid = parse_aaguid(&key).ok_or_else(|| refused("the key is not a UUID"))?;
            let name = entry.name.trim();
            if name.is_empty()
                || name.chars().count() > MAX_NAME_CHARS
                || name.chars().any(char::is_control)
            {
                return Err(refused(&format!(
                    "the name must be 1 to {MAX_NAME_CHARS} characters without control characters"
                )));
            }
            for icon in [&entry.icon_light, &entry.icon_dark].into_iter().flatten() {
                check_icon(icon).map_err(|what| refused(&what))?;
            }
            let provider = Provider {
                name: name.to_owned(),
                icon: entry.icon_light.or(entry.icon_dark),
            };
            if by_aaguid.insert(aaguid, provider).is_some() {
                return Err(refused("the AAGUID is listed twice"));
            }
        }
        Ok(Self { by_aaguid })
    }

    /// How many AAGUIDs the list names.
    pub fn len(&self) -> usize {
        self.by_aaguid.len()
    }

    /// The provider of a passkey with this AAGUID (`None`: not recorded), if the list has it.
    pub fn get(&self, aaguid: Option<[u8; 16]>) -> Option<&Provider> {
        self.by_aaguid.get(&aaguid?)
    }

    /// The provider's name, or "Unknown authenticator".
    pub fn name(&self, aaguid: Option<[u8; 16]>) -> &str {
        self.get(aaguid)
            .map_or(UNKNOWN_PROVIDER, |provider| provider.name.as_str())
    }

    /// The provider's icon (a data URI), if the list has one.
    pub fn icon(&self, aaguid: Option<[u8; 16]>) -> Option<&str> {
        self.get(aaguid)?.icon.as_deref()
    }
}

/// An icon must be a base64 image data URI: the page shows it as an `<img src>`, so nothing
/// else (a URL to fetch, a script) may come through.
fn check_icon(icon: &str) -> Result<(), String> {
    let well_formed = icon.len() <= MAX_ICON_BYTES
        && icon
            .strip_prefix("data:image/")
            .and_then(|rest| rest.split_once(";base64,"))
            .is_some_and(|(subtype, data)| {
                !subtype.is_empty()
                    && subtype
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
                    && data
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            });
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "an icon must be a data:image/…;base64,… URI of at most {MAX_ICON_BYTES} bytes"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOGLE: &str = "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4";

    #[test]
    fn the_vendored_list_names_the_big_providers_with_icons() {
        let providers = Providers::vendored().unwrap();
        assert!(providers.len() > 20, "{}", providers.len());
        let google = parse_aaguid(GOOGLE);
        assert_eq!(providers.name(google), "Google Password Manager");
        assert!(
            providers
                .icon(google)
                .unwrap()
                .starts_with("data:image/svg+xml;base64,")
        );
        let windows = parse_aaguid("08987058-cadc-4b81-b6e1-30de50dcbe96");
        assert_eq!(providers.name(windows), "Windows Hello");
    }

    #[test]
    fn unknown_zero_and_unrecorded_aaguids_are_unknown_authenticators() {
        let providers = Providers::vendored().unwrap();
        for aaguid in [None, Some([0; 16]), Some([0x42; 16])] {
            assert_eq!(providers.name(aaguid), UNKNOWN_PROVIDER);
            assert_eq!(providers.icon(aaguid), None);
        }
        let empty = Providers::parse("{}").unwrap();
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.name(parse_aaguid(GOOGLE)), UNKNOWN_PROVIDER);
    }

    #[test]
    fn a_list_may_leave_icons_out_and_prefers_the_light_one() {
        let providers = Providers::parse(
            r#"{
                "00000000-0000-0000-0000-000000000001": {"name": " Plain "},
                "00000000-0000-0000-0000-000000000002": {
                    "name": "Both",
                    "icon_dark": "data:image/svg+xml;base64,ZGFyaw==",
                    "icon_light": "data:image/svg+xml;base64,bGlnaHQ="
                },
                "00000000-0000-0000-0000-000000000003": {
                    "name": "Dark only", "icon_dark": "data:image/png;base64,ZGFyaw=="
                }
            }"#,
        )
        .unwrap();
        let one = |n: u8| {
            let mut aaguid = [0; 16];
            aaguid[15] = n;
            Some(aaguid)
        };
        assert_eq!(providers.name(one(1)), "Plain");
        assert_eq!(providers.icon(one(1)), None);
        assert_eq!(
            providers.icon(one(2)),
            Some("data:image/svg+xml;base64,bGlnaHQ=")
        );
        assert_eq!(
            providers.icon(one(3)),
            Some("data:image/png;base64,ZGFyaw==")
        );
    }

    #[test]
    fn a_bad_list_is_refused_naming_the_problem() {
        let refused = |json: &str| Providers::parse(json).unwrap_err().to_string();
        assert!(refused("[]").contains("not an AAGUID list"));
        assert!(refused(r#"{"x": {"name": "A"}}"#).contains("\"x\": the key is not a UUID"));
        let key = "00000000-0000-0000-0000-000000000001";
        assert!(refused(&format!(r#"{{"{key}": {{"name": ""}}}}"#)).contains("the name must"));
        assert!(refused(&format!(r#"{{"{key}": {{}}}}"#)).contains("missing field `name`"));
        let script =
            format!(r#"{{"{key}": {{"name": "A", "icon_light": "javascript:alert(1)"}}}}"#);
        assert!(refused(&script).contains("an icon must be a data:image/"));
        let remote = format!(r#"{{"{key}": {{"name": "A", "icon_dark": "https://x/i.svg"}}}}"#);
        assert!(refused(&remote).contains("an icon must be"));
        let twice = format!(
            r#"{{"{GOOGLE}": {{"name": "A"}}, "{}": {{"name": "B"}}}}"#,
            GOOGLE.to_uppercase()
        );
        assert!(refused(&twice).contains("listed twice"));
    }

    #[test]
    fn a_file_replaces_the_list_and_a_missing_one_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.json");
        std::fs::write(&path, format!(r#"{{"{GOOGLE}": {{"name": "Ours"}}}}"#)).unwrap();
        let providers = Providers::from_file(&path).unwrap();
        assert_eq!(providers.name(parse_aaguid(GOOGLE)), "Ours");
        assert_eq!(providers.len(), 1);
        let missing = Providers::from_file(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.to_string().contains("nope.json"), "{missing}");
        std::fs::write(&path, "{").unwrap();
        let broken = Providers::from_file(&path).unwrap_err().to_string();
        assert!(
            broken.contains("names.json: not an AAGUID list"),
            "{broken}"
        );
    }

    #[test]
    fn aaguids_read_and_print_as_uuids() {
        let google = parse_aaguid(&GOOGLE.to_uppercase()).unwrap();
        assert_eq!(aaguid_text(google), GOOGLE);
        assert_eq!(parse_aaguid("not-a-uuid"), None);
    }
}
