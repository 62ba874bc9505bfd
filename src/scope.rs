//! Scopes: what a client may ask for, and the `scope` claim of a Partner JWT.

/// Scope of a token whose request names none.
pub const DEFAULT_SCOPE: &str = "issue";

/// Checks a scope string: 1 to 100 characters, no control characters, no leading or trailing
/// space (AIR Kit scopes may contain inner spaces, e.g. `issue on-behalf`).
pub fn validate_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.chars().count() > 100 {
        return Err("a scope must be 1 to 100 characters".into());
    }
    if scope.chars().any(char::is_control) || scope.trim() != scope {
        return Err(format!(
            "scope {scope:?} has control characters or surrounding spaces"
        ));
    }
    Ok(())
}
