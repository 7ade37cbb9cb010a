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

/// The first character of `s` that would make an audit line read
/// otherwise than it says, when printed: an invisible format character
/// (Unicode category Cf: bidi overrides and isolates such as U+202E,
/// zero-width characters such as U+200B, U+FEFF) or a line or paragraph
/// separator (Zl, Zp). Control characters (Cc) are the callers' concern.
fn invisible(s: &str) -> Option<char> {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    s.chars().find(|c| {
        matches!(
            c.general_category(),
            G::Format | G::LineSeparator | G::ParagraphSeparator
        )
    })
}

fn no_invisible(field: &'static str, s: &str) -> R {
    match invisible(s) {
        None => Ok(()),
        Some(c) => Err(ApiError::invalid(
            field,
            format!(
                "must not contain U+{:04X}: invisible format characters (bidi controls, \
                 zero-width characters) and line separators could make the audit log \
                 read otherwise than it says",
                c as u32
            ),
        )),
    }
}

/// A name: non-empty, at most `max` bytes, no control or invisible
/// characters.
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
    no_invisible(field, s)
}

/// Free text: at most `max` bytes, no control characters but newline and
/// tab, no invisible characters.
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
    no_invisible(field, s)
}

/// What an Issue or BeginTask records as its intent when it gives none and
/// `intent_required` is off: the audit entry says so.
pub const INTENT_NOT_GIVEN: &str = "(none given: intent_required is off)";

/// The intent of an Issue or BeginTask: free text, required unless
/// `required` is off, when an empty one becomes [`INTENT_NOT_GIVEN`].
pub fn intent(s: String, required: bool) -> R<String> {
    text("intent", &s, INTENT_BYTES_MAX)?;
    if !s.trim().is_empty() {
        return Ok(s);
    }
    if required {
        return Err(ApiError::invalid(
            "intent",
            "say why: every grant and task carries its intent (the audit log records it)",
        ));
    }
    Ok(INTENT_NOT_GIVEN.to_string())
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

    #[test]
    fn invisible_characters_are_refused_in_free_text() {
        for bad in [
            "\u{202E}", "\u{200B}", "\u{200D}", "\u{2066}", "\u{FEFF}", "\u{00AD}", "\u{2028}",
        ] {
            let s = format!("triage{bad}issue");
            let e = text("intent", &s, 100).unwrap_err().to_string();
            assert!(e.contains("U+"), "{bad:?}: {e}");
            assert!(name("task_id", &s, 100).is_err(), "{bad:?}");
        }
        assert!(text("intent", "réparer l'issue 42 — 修复 ✅", 100).is_ok());
    }

    #[test]
    fn intent_is_required_unless_relaxed() {
        assert!(intent(String::new(), true).is_err());
        assert!(intent("  ".into(), true).is_err());
        assert_eq!(intent("why".into(), true).unwrap(), "why");
        assert_eq!(intent(String::new(), false).unwrap(), INTENT_NOT_GIVEN);
        assert!(intent("\u{202E}x".into(), false).is_err());
    }
}
