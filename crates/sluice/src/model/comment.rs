//! Comments on rules: free text for the operator, bounded and printable.

/// Longest comment accepted on a rule, in bytes.
pub const MAX_COMMENT: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommentError {
    #[error("comment is {0} bytes long; the limit is {MAX_COMMENT} bytes")]
    TooLong(usize),
    #[error("comment must not contain control characters")]
    Control,
}

/// Checks a comment: at most [`MAX_COMMENT`] bytes, no control characters.
pub fn validate_comment(c: &str) -> Result<(), CommentError> {
    if c.len() > MAX_COMMENT {
        return Err(CommentError::TooLong(c.len()));
    }
    if c.chars().any(char::is_control) {
        return Err(CommentError::Control);
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
        assert_eq!(normalize_comment(Some(String::new())), Ok(None));
    }
}
