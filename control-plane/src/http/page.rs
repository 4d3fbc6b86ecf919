//! The self-service page: `static/index.html` and its JavaScript modules (`static/*.js`, loaded
//! with `<script type="module">`, no build step), compiled in, served with a content security
//! policy that lets the page load nothing from elsewhere and run no inline script. Images may be
//! `data:` URIs: the passkey providers' icons arrive that way in the API's JSON.

use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../static/index.html");
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The page's scripts by path: `app.js` is the entry the HTML loads, the rest are the modules it
/// imports (named for what they do).
pub const SCRIPTS: [(&str, &str); 6] = [
    ("/app.js", include_str!("../../static/app.js")),
    ("/api.js", include_str!("../../static/api.js")),
    ("/view.js", include_str!("../../static/view.js")),
    ("/ceremonies.js", include_str!("../../static/ceremonies.js")),
    ("/list.js", include_str!("../../static/list.js")),
    ("/signals.js", include_str!("../../static/signals.js")),
];

/// `GET /` and `GET /index.html`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET` of one of [`SCRIPTS`]; a module script must come as JavaScript, or the browser refuses
/// to run it.
pub async fn script(source: &'static str) -> Response {
    asset("text/javascript; charset=utf-8", source)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths a script imports (`from "./x.js"`).
    fn imports(source: &str) -> Vec<String> {
        source
            .lines()
            .filter_map(|line| line.split_once(" from \"./"))
            .filter_map(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| format!("/{path}"))
            .collect()
    }

    #[test]
    fn every_module_a_script_imports_is_served() {
        let served: Vec<&str> = SCRIPTS.iter().map(|(path, _)| *path).collect();
        let mut imported = vec!["/app.js".to_owned()];
        for (path, source) in SCRIPTS {
            for import in imports(source) {
                assert!(served.contains(&import.as_str()), "{path} imports {import}");
                imported.push(import);
            }
        }
        for path in served {
            assert!(
                imported.iter().any(|i| i == path),
                "{path} is served but unused"
            );
        }
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/app.js"></script>"#));
    }

    #[test]
    fn provider_icons_as_data_uris_are_allowed() {
        assert!(PAGE_CSP.contains("img-src 'self' data:;"));
        assert!(PAGE_CSP.contains("script-src 'self';"));
    }
}
