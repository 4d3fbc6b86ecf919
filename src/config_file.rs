//! Loading a server's TOML configuration file into its typed config, failing with a message
//! that names the file and the problem (an unknown field is an error, so typos do not pass).

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::Failure;

/// Reads `path` into `T`, or `T::default()` when no file was given.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, Failure> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|error| {
        Failure::Config(format!(
            "cannot read config file {}: {error}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|error| {
        let message = error.message().trim_end();
        let location = error
            .span()
            .map(|span| describe(&text, span.start))
            .unwrap_or_default();
        Failure::Config(format!(
            "invalid config file {}{location}: {message}",
            path.display()
        ))
    })
}

/// " (line N, setting `name`)" for a byte offset into the file. Only the part of the line before
/// `=` is shown, so a value — possibly a token — is never echoed.
fn describe(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_number = text[..offset].matches('\n').count() + 1;
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((name, _)) if !name.trim().is_empty() => {
            format!(" (line {line_number}, setting `{}`)", name.trim())
        }
        _ => format!(" (line {line_number})"),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn names_the_setting_but_never_its_value() {
        let text = "listen = \"x\"\ngateway_token = 42\n";
        let offset = text.find("42").unwrap_or_default();
        let described = describe(text, offset);
        assert_eq!(described, " (line 2, setting `gateway_token`)");
        assert!(!described.contains("42"));
        assert_eq!(describe("[[route]]\n", 2), " (line 1)");
    }
}
