//! The vocabulary the capabilities share, and that therefore lives below
//! them: CIDRs, container selectors, protocols, comments, strict JSON shapes, the plan every
//! capability's part of a policy follows, and the one-line error chain.
//! Pure code, no I/O.

pub mod cidr;
pub mod comment;
pub mod identity;
pub mod json;
pub mod plan;
pub mod proto;
pub mod selector;

pub use cidr::{Cidr, CidrError};
pub use comment::{normalize_comment, validate_comment, CommentError, MAX_COMMENT};
pub use identity::{canonical, Identify, Nobody, Who};
pub use proto::Proto;
pub use selector::{LookupError, Resolution, Resolve, Selector, SelectorError, Target};

/// An error and its causes on one line, ripgrep-style: `what: why: why`. A
/// cause whose text the message already holds is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
        src = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_is_one_line_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("loading: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("no space"));
        assert_eq!(super::chain(&e), "loading: no space");
        #[derive(Debug, thiserror::Error)]
        #[error("attaching")]
        struct Plain(#[source] std::io::Error);
        assert_eq!(super::chain(&Plain(std::io::Error::other("busy"))), "attaching: busy");
    }
}
