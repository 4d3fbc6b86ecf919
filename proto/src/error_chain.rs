//! One line for an error and everything that caused it (`outer: cause: root cause`), for log
//! fields and command-line messages. The one copy for the workspace.

/// `error`, then each of its sources, joined by `": "`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot connect")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn joins_every_cause() {
        let outer = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&outer), "cannot connect: connection refused");
        assert_eq!(
            error_chain(&std::fmt::Error),
            "an error occurred when formatting an argument"
        );
    }
}
