//! The firewall rule model: what a deny/allow rule is, how a request
//! becomes one, and where it lives in the kernel's tables. A rule matches
//! a CIDR, or a selector of containers (`container:NAME`,
//! `label:KEY=VALUE`) whose current addresses the kernel holds as host
//! entries. Pure code.

use std::{net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};
use sluice_abi::FwTable;

use crate::{
    dataplane::LpmKey,
    model::{normalize_comment, Cidr, CidrError, CommentError, SelectorError, Target},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(transparent)]
    Comment(#[from] CommentError),
}

/// Body of `POST /v1/deny` and `POST /v1/allow` (one object or an array),
/// and an entry of a policy's `deny` and `allow` sections.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    /// A CIDR, or a selector: `container:NAME` (name or id prefix) or
    /// `label:KEY=VALUE`.
    pub cidr: String,
    /// Match the destination address instead of the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dst: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Add a `container:` rule even though no such container exists yet
    /// (it applies once the container is created).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inactive: bool,
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
    pub target: Target,
    pub dir: Direction,
    pub comment: Option<String>,
}

/// The kernel table of rules of `action` and `dir` for one address family.
pub fn table_of(action: Action, dir: Direction, v6: bool) -> FwTable {
    FwTable::new(action == Action::Deny, dir == Direction::Dst, v6)
}

/// The host entry (`/32`, `/128`) of an address a selector resolved to.
pub fn host_key(a: IpAddr) -> LpmKey {
    LpmKey::from(ipnet::IpNet::from(a))
}

impl RuleSpec {
    /// Validates a request's parts: `target` is a CIDR or a selector.
    pub fn new(action: Action, target: &str, dst: bool, comment: Option<String>) -> Result<Self, RuleError> {
        let target = target.parse::<Target>().map_err(|e| match e {
            SelectorError::Cidr(c) => RuleError::Cidr(c),
            e => RuleError::Selector(e),
        })?;
        let comment = normalize_comment(comment)?;
        Ok(RuleSpec {
            action,
            target,
            dir: if dst { Direction::Dst } else { Direction::Src },
            comment,
        })
    }

    /// A CIDR rule (tests, imports).
    pub fn cidr(action: Action, cidr: Cidr, dir: Direction, comment: Option<String>) -> Self {
        RuleSpec {
            action,
            target: Target::Cidr(cidr),
            dir,
            comment,
        }
    }

    /// The CIDR this rule matches (None for a selector rule).
    pub fn net(&self) -> Option<Cidr> {
        self.target.cidr()
    }

    /// The kernel table and key of a CIDR rule (None for a selector rule,
    /// whose entries follow its containers).
    pub fn entry(&self) -> Option<(FwTable, LpmKey)> {
        let c = self.net()?;
        Some((table_of(self.action, self.dir, c.is_v6()), LpmKey::from(c.net())))
    }

    /// The request that validates back to this spec (export).
    pub fn request(&self) -> RuleRequest {
        RuleRequest {
            cidr: self.target.to_string(),
            dst: self.dir == Direction::Dst,
            comment: self.comment.clone(),
            inactive: false,
        }
    }

    /// The identity of a rule: one rule per (action, direction, target).
    pub fn key(&self) -> RuleKey {
        RuleKey {
            action: self.action,
            dir: self.dir,
            target: self.target.clone(),
        }
    }
}

/// What makes two rules the same rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub action: Action,
    pub dir: Direction,
    pub target: Target,
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
        format!("{} {} {}", self.action.as_str(), self.dir.as_str(), self.target)
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
        assert_eq!(r.entry().unwrap().0, FwTable::AllowDst6);
        let r2 = r.request();
        assert_eq!(RuleSpec::new(Action::Allow, &r2.cidr, r2.dst, r2.comment).unwrap(), r);
        let r = RuleSpec::new(Action::Deny, "198.18.1.0/24", false, None).unwrap();
        assert_eq!(
            r.entry().unwrap(),
            (
                FwTable::DenySrc4,
                LpmKey::V4(sluice_abi::LpmV4Key {
                    prefixlen: 24,
                    addr: [198, 18, 1, 0]
                })
            )
        );
        assert_eq!(r.key().describe(), "deny src 198.18.1.0/24");
        let s = RuleSpec::new(Action::Deny, "container:web", true, None).unwrap();
        assert!(s.entry().is_none());
        assert_eq!(s.key().describe(), "deny dst container:web");
        assert_eq!(s.request().cidr, "container:web");
        assert!(matches!(
            RuleSpec::new(Action::Deny, "container:-x", false, None),
            Err(RuleError::Selector(_))
        ));
        assert!(matches!(
            RuleSpec::new(Action::Deny, "10.0.0.0/33", false, None),
            Err(RuleError::Cidr(_))
        ));
        assert_eq!(
            host_key("198.18.1.2".parse().unwrap()),
            LpmKey::V4(sluice_abi::LpmV4Key {
                prefixlen: 32,
                addr: [198, 18, 1, 2]
            })
        );
    }
}
