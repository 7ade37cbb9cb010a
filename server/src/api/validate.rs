//! Request validation: shapes and limits, before anything is proposed.

use super::errors::ApiError;
use crate::ledger::Scope;
use crate::limits::*;

type R<T = ()> = Result<T, ApiError>;

/// A SPIFFE ID naming a workload: `spiffe://<trust-domain>/<path>`, per the
/// SPIFFE ID spec (lowercase trust domain of [a-z0-9.-_], path segments of
/// [A-Za-z0-9.-_], none empty, "." or "..", no query or fragment).
pub fn spiffe_id(field: &'static str, s: &str) -> R {
    if s.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if s.len() > SUBJECT_BYTES_MAX {
        return Err(ApiError::invalid(
            field,
            format!("longer than {SUBJECT_BYTES_MAX} bytes"),
        ));
    }
    let rest = s.strip_prefix("spiffe://").ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("{s:?} is not a SPIFFE ID (spiffe://trust-domain/path)"),
        )
    })?;
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    if td.is_empty() || td.len() > TRUST_DOMAIN_BYTES_MAX {
        return Err(ApiError::invalid(field, "trust domain must be 1-255 bytes"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(ApiError::invalid(
            field,
            format!("trust domain {td:?} may hold only a-z, 0-9, '.', '-', '_'"),
        ));
    }
    if path.is_empty() {
        return Err(ApiError::invalid(
            field,
            "a workload SPIFFE ID needs a path after the trust domain",
        ));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(ApiError::invalid(
                field,
                "path segments must not be empty, '.' or '..'",
            ));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(ApiError::invalid(
                field,
                format!("path segment {seg:?} may hold only A-Z, a-z, 0-9, '.', '-', '_'"),
            ));
        }
    }
    Ok(())
}

pub fn request_id(s: &str) -> R {
    if s.is_empty() || s.len() > REQUEST_ID_BYTES_MAX {
        return Err(ApiError::invalid(
            "request_id",
            format!("must be 1-{REQUEST_ID_BYTES_MAX} bytes"),
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "request_id",
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// A name: non-empty, at most `max` bytes, no control characters.
pub fn name(field: &'static str, s: &str, max: usize) -> R {
    if s.is_empty() || s.len() > max {
        return Err(ApiError::invalid(field, format!("must be 1-{max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn text(field: &'static str, s: &str, max: usize) -> R {
    if s.len() > max {
        return Err(ApiError::invalid(field, format!("longer than {max} bytes")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters other than newline and tab",
        ));
    }
    Ok(())
}

pub fn scopes(scopes: &[Scope]) -> R {
    if scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "at least one scope is required",
        ));
    }
    if scopes.len() > SCOPES_PER_GRANT_MAX {
        return Err(ApiError::invalid(
            "scopes",
            format!("more than {SCOPES_PER_GRANT_MAX} scopes"),
        ));
    }
    for s in scopes {
        name("scopes.resource", &s.resource, RESOURCE_BYTES_MAX)?;
        if s.actions.is_empty() || s.actions.len() > ACTIONS_PER_SCOPE_MAX {
            return Err(ApiError::invalid(
                "scopes.actions",
                format!("each scope needs 1-{ACTIONS_PER_SCOPE_MAX} actions"),
            ));
        }
        for a in &s.actions {
            name("scopes.actions", a, ACTION_BYTES_MAX)?;
        }
    }
    Ok(())
}

/// Grant ids are 32 lowercase hex characters.
pub fn grant_id(field: &'static str, s: &str) -> R {
    if s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be a grant id (32 lowercase hex characters)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        assert!(spiffe_id("s", "spiffe://example.org/agent/planner").is_ok());
        for bad in [
            "",
            "example.org/agent",
            "spiffe://",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/a",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?x=1",
            "https://example.org/a",
        ] {
            assert!(spiffe_id("s", bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(SUBJECT_BYTES_MAX));
        assert!(spiffe_id("s", &long).is_err());
    }

    #[test]
    fn request_ids_and_names() {
        assert!(request_id("abc-123").is_ok());
        assert!(request_id("").is_err());
        assert!(request_id("has space").is_err());
        assert!(request_id(&"x".repeat(REQUEST_ID_BYTES_MAX + 1)).is_err());
        assert!(name("t", "task\u{0}", 10).is_err());
        assert!(text("i", "line\nline", 100).is_ok());
        assert!(text("i", &"x".repeat(INTENT_BYTES_MAX + 1), INTENT_BYTES_MAX).is_err());
    }
}

/// A duration in seconds: 0 takes `default`, above `max` is refused.
pub fn seconds(field: &'static str, asked: u64, default: u64, max: u64) -> R<u64> {
    match asked {
        0 => Ok(default),
        s if s > max => Err(ApiError::invalid(
            field,
            format!("{s} exceeds the maximum of {max}"),
        )),
        s => Ok(s),
    }
}
