//! `keygate_proxy::credential`: the credential finder and the stripping before forwarding, on a
//! `HeaderMap` built from arbitrary (name, value) pairs, for every `AuthMode`, with the default
//! header names or configured ones (kept only when `ProxyConfig::validate` accepts them).
//!
//! Inputs are `Arbitrary` (`Input`), or a plain header block when they start with
//! `headers\n` (the seeds in `fuzz/corpus/credential_extraction` are such blocks).
//!
//! Properties (DESIGN.md "Hostile traffic", issue 13):
//! - never a panic;
//! - a route only gets the kinds of credential it accepts, and nothing on `none` routes;
//! - one credential per request: a token found in a header is the only one the headers carry
//!   (at most one `Authorization` value; every API-key value names the same token); session
//!   cookies that disagree are `Ambiguous`;
//! - after `strip`, no credential is left for any mode (only `Ambiguous`, when two
//!   `Authorization` values of other schemes remain), headers other than the credential
//!   headers are untouched, and stripping again changes nothing.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};
use keygate_proxy::credential::{Carrier, Credential, CredentialHeaders};
use keygate_proxy::{AuthMode, ProxyConfig};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    Authorization,
    ApiKey,
    Cookie,
    /// The configured names below, when they are used.
    CustomAuthorization,
    CustomApiKey,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Names {
    authorization: String,
    api_key: String,
    cookie: String,
}

#[derive(Arbitrary, Debug)]
struct Input {
    names: Option<Names>,
    headers: Vec<(Name, Vec<u8>)>,
}

const MODES: [AuthMode; 4] = [
    AuthMode::None,
    AuthMode::Key,
    AuthMode::Session,
    AuthMode::KeyOrSession,
];

/// Inputs starting with this are a header block (`name: value` lines, any bytes in values),
/// read with the default header names: readable seeds, and mutations of real requests.
const TEXT: &[u8] = b"headers\n";

fuzz_target!(|data: &[u8]| {
    let input = match data.strip_prefix(TEXT) {
        Some(block) => Input {
            names: None,
            headers: header_block(block),
        },
        None => match Input::arbitrary_take_rest(Unstructured::new(data)) {
            Ok(input) => input,
            Err(_) => return,
        },
    };
    run(input);
});

/// `name: value` lines, as in an HTTP/1.1 request head.
fn header_block(block: &[u8]) -> Vec<(Name, Vec<u8>)> {
    block
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).into_owned();
            let value = line[colon + 1..].trim_ascii().to_vec();
            Some((Name::Other(name), value))
        })
        .collect()
}

fn run(input: Input) {
    let mut config = ProxyConfig {
        control_plane: vec!["http://cp:7070".to_owned()],
        upstream: Some("http://upstream:3000".to_owned()),
        gateway_token: "fuzz".into(),
        ..ProxyConfig::default()
    };
    if let Some(names) = &input.names {
        config.authorization_header = names.authorization.clone();
        config.api_key_header = names.api_key.clone();
        config.session_cookie = names.cookie.clone();
        if config.validate().is_err() {
            return;
        }
    }
    let auth_name = lower(&config.authorization_header);
    let key_name = lower(&config.api_key_header);
    // Configurations where the credential headers coincide with each other or with `Cookie`
    // are left out: `validate` accepts them (see FUZZING.md), but they are not a shape anyone
    // deploys, and they make "strip leaves nothing" untrue by construction.
    if auth_name == key_name || auth_name == "cookie" || key_name == "cookie" {
        return;
    }
    let Ok(names) = CredentialHeaders::from_config(&config) else {
        panic!("validated names must be accepted: {config:?}");
    };
    let (Ok(auth_name), Ok(key_name)) = (
        HeaderName::from_bytes(auth_name.as_bytes()),
        HeaderName::from_bytes(key_name.as_bytes()),
    ) else {
        panic!("validated header names must parse: {config:?}");
    };

    let mut headers = HeaderMap::new();
    for (name, value) in input.headers.iter().take(32) {
        let name = match name {
            Name::Authorization => http::header::AUTHORIZATION,
            Name::ApiKey => HeaderName::from_static("x-api-key"),
            Name::Cookie => COOKIE,
            Name::CustomAuthorization => auth_name.clone(),
            Name::CustomApiKey => key_name.clone(),
            Name::Other(other) => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        headers.append(name, value);
    }

    for mode in MODES {
        let (credential, carrier) = names.find(&headers, mode);
        assert_eq!(names.extract(&headers, mode), credential);
        check_found(&headers, &auth_name, &key_name, mode, credential, carrier);
    }

    let mut stripped = headers.clone();
    names.strip(&mut stripped);
    let remaining_authorization = stripped.get_all(&auth_name).iter().count();
    for mode in MODES {
        let found = names.find(&stripped, mode);
        let allowed = found == (Credential::Missing, Carrier::Nothing)
            || (found == (Credential::Ambiguous, Carrier::Header) && remaining_authorization > 1);
        assert!(
            allowed,
            "{mode:?}: {found:?} left after strip\nbefore: {headers:?}\nafter: {stripped:?}"
        );
    }
    for name in headers.keys() {
        if *name != auth_name && *name != key_name && *name != COOKIE {
            let before: Vec<_> = headers.get_all(name).iter().collect();
            let after: Vec<_> = stripped.get_all(name).iter().collect();
            assert_eq!(before, after, "strip changed {name}");
        }
    }
    let mut again = stripped.clone();
    names.strip(&mut again);
    assert_eq!(again, stripped, "strip is not idempotent");
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn check_found(
    headers: &HeaderMap,
    auth_name: &HeaderName,
    key_name: &HeaderName,
    mode: AuthMode,
    credential: Credential<'_>,
    carrier: Carrier,
) {
    let takes_keys = matches!(mode, AuthMode::Key | AuthMode::KeyOrSession);
    let takes_sessions = matches!(mode, AuthMode::Session | AuthMode::KeyOrSession);
    match credential {
        Credential::Missing => assert_eq!(carrier, Carrier::Nothing),
        _ => assert_ne!(carrier, Carrier::Nothing, "{credential:?} found nowhere"),
    }
    if mode == AuthMode::None {
        assert_eq!(credential, Credential::Missing);
    }
    match credential {
        Credential::ApiKey(_) => assert!(takes_keys, "{mode:?} got {credential:?}"),
        Credential::Session(_) => assert!(takes_sessions, "{mode:?} got {credential:?}"),
        _ => {}
    }
    if carrier == Carrier::Cookie {
        // `Ambiguous`: session cookies (either name) with different values.
        assert!(
            takes_sessions
                && matches!(
                    credential,
                    Credential::Session(_) | Credential::Unreadable | Credential::Ambiguous
                )
        );
    }
    // One credential per request.
    if let (Credential::ApiKey(token) | Credential::Session(token), Carrier::Header) =
        (credential, carrier)
    {
        let authorization: Vec<&HeaderValue> = headers.get_all(auth_name).iter().collect();
        assert!(
            authorization.len() <= 1,
            "{authorization:?} gave {credential:?}"
        );
        if takes_keys {
            for value in headers.get_all(key_name) {
                let key = value.to_str().ok().map(str::trim);
                assert_eq!(
                    key,
                    Some(token),
                    "API-key header disagrees with {credential:?}"
                );
            }
        }
    }
}
