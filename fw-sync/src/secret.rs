//! Credentials (API keys, tokens) read from a file or an environment variable.
//!
//! A [`Secret`] never shows its value: `Debug` and `Display` print where it came from, so a
//! config dumped into a log or an error message cannot leak it.

use std::fmt;
use std::path::PathBuf;

/// Where a credential comes from, as written in the daemon config.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the value (surrounding whitespace trimmed).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// A loaded credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

impl Secret {
    /// Reads the value; the error says where from, never what was (or was not) found.
    pub fn load(source: SecretSource) -> Result<Secret, String> {
        let value = match &source {
            SecretSource::File(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
            SecretSource::Env(v) => std::env::var(v).map_err(|_| format!("environment variable {v} is not set"))?,
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(format!("{source} is empty"));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(format!("{source} holds control characters (not a single-line credential)"));
        }
        Ok(Secret { value, source })
    }

    /// A secret given directly (tests and emulators).
    pub fn literal(value: &str) -> Secret {
        Secret { value: value.to_string(), source: SecretSource::Env("<literal>".into()) }
    }

    /// The value, for the one place that sends it (a header or a form field).
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(from {}, redacted)", self.source)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret from {}>", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_value() {
        let dir = std::env::temp_dir().join(format!("fwsync-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("key");
        std::fs::write(&f, "  LUFRPT1s3cr3t\n").expect("write key");
        let s = Secret::load(SecretSource::File(f.clone())).expect("loads");
        assert_eq!(s.expose(), "LUFRPT1s3cr3t");
        for shown in [format!("{s:?}"), format!("{s}")] {
            assert!(!shown.contains("s3cr3t") && shown.contains("key"), "{shown}");
        }
        std::fs::write(&f, "\n").expect("write key");
        let e = Secret::load(SecretSource::File(f)).expect_err("empty");
        assert!(e.ends_with("is empty"), "{e}");
        let e = Secret::load(SecretSource::Env("FWSYNC_TEST_SURELY_UNSET".into())).expect_err("unset");
        assert_eq!(e, "environment variable FWSYNC_TEST_SURELY_UNSET is not set");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
