//! The firewall rule model: what a deny/allow rule is, how a request
//! becomes one, and where it lives in the kernel's tables. Pure code.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sluice_abi::FwTable;

use crate::{
    dataplane::LpmKey,
    model::{normalize_comment, Cidr, CidrError, CommentError},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Comment(#[from] CommentError),
}

/// Body of `POST /v1/deny` and `POST /v1/allow` (one object or an array),
/// and an entry of a policy's `deny` and `allow` sections.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    pub cidr: String,
    /// Match the destination address instead of the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dst: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Deny drops matching packets; allow passes them and wins over any deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(format!("unknown action {s:?}")),
        }
    }
}

/// Which address of the packet the CIDR is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Src,
    Dst,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Src => "src",
            Direction::Dst => "dst",
        }
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "src" => Ok(Direction::Src),
            "dst" => Ok(Direction::Dst),
            _ => Err(format!("unknown direction {s:?}")),
        }
    }
}

/// A validated rule, before it has an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub action: Action,
    pub cidr: Cidr,
    pub dir: Direction,
    pub comment: Option<String>,
}

impl RuleSpec {
    pub fn new(action: Action, cidr: &str, dst: bool, comment: Option<String>) -> Result<Self, RuleError> {
        let cidr = cidr.parse()?;
        let comment = normalize_comment(comment)?;
        Ok(RuleSpec {
            action,
            cidr,
            dir: if dst { Direction::Dst } else { Direction::Src },
            comment,
        })
    }

    /// The kernel table this rule lives in.
    pub fn table(&self) -> FwTable {
        FwTable::new(
            self.action == Action::Deny,
            self.dir == Direction::Dst,
            self.cidr.is_v6(),
        )
    }

    /// The rule's key in its kernel table.
    pub fn lpm_key(&self) -> LpmKey {
        LpmKey::from(self.cidr.net())
    }

    /// The request that validates back to this spec (export).
    pub fn request(&self) -> RuleRequest {
        RuleRequest {
            cidr: self.cidr.to_string(),
            dst: self.dir == Direction::Dst,
            comment: self.comment.clone(),
        }
    }

    /// The identity of a rule: one rule per (action, direction, CIDR).
    pub fn key(&self) -> RuleKey {
        RuleKey {
            action: self.action,
            dir: self.dir,
            cidr: self.cidr,
        }
    }
}

/// What makes two rules the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub action: Action,
    pub dir: Direction,
    pub cidr: Cidr,
}

/// A stored rule: a spec plus its id, counter slot and creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: i64,
    pub slot: u32,
    pub spec: RuleSpec,
    /// Unix seconds.
    pub created: i64,
}

impl RuleKey {
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.action.as_str(), self.dir.as_str(), self.cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_COMMENT;

    #[test]
    fn comment_rules() {
        assert!(RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some("x".repeat(MAX_COMMENT))).is_ok());
        assert_eq!(
            RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some("x".repeat(MAX_COMMENT + 1))).unwrap_err(),
            RuleError::Comment(CommentError::TooLong(MAX_COMMENT + 1))
        );
        assert_eq!(
            RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some("a\nb".into())).unwrap_err(),
            RuleError::Comment(CommentError::Control)
        );
        assert_eq!(
            RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some(String::new()))
                .unwrap()
                .comment,
            None
        );
    }

    #[test]
    fn tables_keys_and_requests() {
        let r = RuleSpec::new(Action::Allow, "2001:2::/48", true, None).unwrap();
        assert_eq!(r.table(), FwTable::AllowDst6);
        let r2 = r.request();
        assert_eq!(RuleSpec::new(Action::Allow, &r2.cidr, r2.dst, r2.comment).unwrap(), r);
        let r = RuleSpec::new(Action::Deny, "198.18.1.0/24", false, None).unwrap();
        assert_eq!(r.table(), FwTable::DenySrc4);
        assert_eq!(
            r.lpm_key(),
            LpmKey::V4(sluice_abi::LpmV4Key {
                prefixlen: 24,
                addr: [198, 18, 1, 0]
            })
        );
        assert_eq!(r.key().describe(), "deny src 198.18.1.0/24");
    }
}
