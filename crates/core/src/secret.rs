//! Values that must never be printed.
//!
//! [`Secret`] holds credentials and keys: zeroized on drop, redacted in `Debug`/`Display`.
//! [`Sensitive`] wraps any record value that may be personal data, with the same redaction.
//! Getting at the content takes an explicit call (`expose`), which is easy to grep for.

use std::fmt;
use zeroize::Zeroize;

const REDACTED: &str = "«redacted»";

/// A secret string (password, connection string, key material).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself. Every call site is a place a reviewer should look at.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A value of a record that may be sensitive (personal or financial data).
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    pub fn new(v: T) -> Self {
        Self(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("postgres://u:hunter2@db/x".into());
        let v = Sensitive::new("GB33BUKB20201555555555".to_string());
        let printed = format!("{s} {s:?} {s:#?} {v} {v:?} {:?}", Some(&s));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("BUKB"), "{printed}");
        assert!(printed.contains(REDACTED));
        assert_eq!(s.expose(), "postgres://u:hunter2@db/x");
    }
}
