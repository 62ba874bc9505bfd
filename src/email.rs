//! An email address as keyhost accepts it: the `email` claim of a Partner JWT and the user an
//! issuance is for.

use std::fmt;

/// A checked email address: at most 254 characters, no surrounding spaces, a dotted domain,
/// written exactly as [`email_address`] reads it (no display names, no comments).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a text is not an [`Email`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Too long, or spaces around it.
    #[error("email must be an address of at most 254 characters without surrounding spaces")]
    Shape,
    /// Not an address.
    #[error("email {0:?} is not a valid address (expected user@example.com)")]
    Invalid(String),
}

impl Email {
    /// Checks `text`.
    pub fn parse(text: &str) -> Result<Self, EmailError> {
        if text.len() > 254 || text.trim() != text {
            return Err(EmailError::Shape);
        }
        match text.parse::<email_address::EmailAddress>() {
            Ok(a) if a.as_str() == text && a.domain().contains('.') && !text.contains('<') => {
                Ok(Self(text.to_owned()))
            }
            _ => Err(EmailError::Invalid(text.to_owned())),
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_pass_and_everything_else_is_refused() {
        for ok in ["user@example.com", "a.b+c@sub.example.org"] {
            assert_eq!(Email::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "user",
            "user@localhost",
            " user@example.com",
            "user@example.com ",
            "User <user@example.com>",
            "@example.com",
            "a@",
            "a@@b.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Email::parse(&format!("{}@example.com", "a".repeat(250))),
            Err(EmailError::Shape)
        );
    }
}
