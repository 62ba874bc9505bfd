//! Scopes: what a client may ask for, and the `scope` claim of a Partner JWT.

/// Scope of a token whose request names none.
pub const DEFAULT_SCOPE: &str = "issue";

/// Checks a scope string: 1 to 100 characters, no control characters, no leading or trailing
/// space (AIR Kit scopes may contain inner spaces, e.g. `issue on-behalf`).
pub fn validate_scope(scope: &str) -> Result<(), ScopeError> {
    if scope.is_empty() || scope.chars().count() > 100 {
        return Err(ScopeError::Length);
    }
    if scope.chars().any(char::is_control) || scope.trim() != scope {
        return Err(ScopeError::Characters(scope.to_owned()));
    }
    Ok(())
}

/// Why a text is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Empty or too long.
    #[error("a scope must be 1 to 100 characters")]
    Length,
    /// Control characters or surrounding spaces.
    #[error("scope {0:?} has control characters or surrounding spaces")]
    Characters(String),
}
