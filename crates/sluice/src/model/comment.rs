//! Comments on rules: free text for the operator, bounded and printable.

/// Longest comment accepted on a rule, in bytes.
pub const MAX_COMMENT: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommentError {
    #[error("comment is {0} bytes long; the limit is {MAX_COMMENT} bytes")]
    TooLong(usize),
    #[error("comment must not contain control characters")]
    Control,
    #[error("comment must not contain invisible formatting characters (U+{0:04X}: bidirectional controls and the like reorder or hide text in a terminal)")]
    Format(u32),
}

/// Invisible characters that change how the text around them shows:
/// bidirectional embeddings, overrides and isolates, marks, zero-width
/// characters and the BOM.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Checks a comment: at most [`MAX_COMMENT`] bytes, no control characters,
/// no invisible formatting characters.
pub fn validate_comment(c: &str) -> Result<(), CommentError> {
    if c.len() > MAX_COMMENT {
        return Err(CommentError::TooLong(c.len()));
    }
    if c.chars().any(char::is_control) {
        return Err(CommentError::Control);
    }
    if let Some(f) = c.chars().find(|c| is_format(*c)) {
        return Err(CommentError::Format(f as u32));
    }
    Ok(())
}

/// An optional comment as rules store it: empty means none.
pub fn normalize_comment(c: Option<String>) -> Result<Option<String>, CommentError> {
    let c = c.filter(|c| !c.is_empty());
    if let Some(c) = &c {
        validate_comment(c)?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_printable() {
        assert!(validate_comment(&"x".repeat(MAX_COMMENT)).is_ok());
        // 129 two-byte characters are 258 bytes: too long.
        let e = validate_comment(&"é".repeat(129)).unwrap_err();
        assert_eq!(e, CommentError::TooLong(258));
        assert!(e.to_string().contains("bytes"));
        assert_eq!(validate_comment("a\nb"), Err(CommentError::Control));
        // "Trojan source": an override that shows "deny" as "ynned".
        assert_eq!(validate_comment("a\u{202E}ynned"), Err(CommentError::Format(0x202E)));
        for c in ['\u{2066}', '\u{200B}', '\u{FEFF}', '\u{061C}'] {
            assert!(validate_comment(&format!("x{c}y")).is_err(), "{c:?}");
        }
        assert!(validate_comment("café ☕ 日本").is_ok(), "ordinary text passes");
        assert_eq!(normalize_comment(Some(String::new())), Ok(None));
    }
}
