//! What a rule points at: a CIDR, or a selector of containers
//! (`container:NAME`, a name or an id prefix; `label:KEY=VALUE`, e.g. a
//! Compose service). A rule stores the selector, never the addresses it
//! resolves to: whoever owns the container registry resolves it again on
//! every runtime event, through [`Resolve`], and the capability puts the
//! current [`Resolution`] in the kernel. Pure code.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use super::cidr::{Cidr, CidrError};

/// Longest container name or label key/value accepted (Docker's own limits
/// are lower; this only bounds what a request can make us store).
pub const MAX_SELECTOR: usize = 253;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("{0:?}: a container selector needs a name or an id prefix, as in container:web")]
    EmptyName(String),
    #[error("{0:?}: container names and ids are letters, digits, '_', '.' and '-', starting with a letter or digit")]
    BadName(String),
    #[error("{0:?}: a label selector is label:KEY=VALUE, as in label:com.docker.compose.service=web")]
    BadLabel(String),
    #[error("{0:?}: control characters are not allowed in a selector")]
    Control(String),
    #[error("{0:?} is longer than {MAX_SELECTOR} characters")]
    TooLong(String),
    #[error("unknown selector {0:?}: use container:NAME or label:KEY=VALUE")]
    Unknown(String),
    #[error(transparent)]
    Cidr(#[from] CidrError),
}

/// A set of containers, by name (or id prefix) or by label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `container:NAME`: one container, by its name or a prefix of its id.
    Container(String),
    /// `label:KEY=VALUE`: every container with that label.
    Label { key: String, value: String },
}

impl Selector {
    /// A container selector names exactly one container; a label selector
    /// may match none or many.
    pub fn is_container(&self) -> bool {
        matches!(self, Selector::Container(_))
    }
}

fn check_name(input: &str, name: &str) -> Result<(), SelectorError> {
    if name.is_empty() {
        return Err(SelectorError::EmptyName(input.into()));
    }
    let ok = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'.' | b'-')));
    if !ok {
        return Err(SelectorError::BadName(input.into()));
    }
    Ok(())
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, SelectorError> {
        if input.len() > MAX_SELECTOR + 6 {
            return Err(SelectorError::TooLong(input.chars().take(40).collect()));
        }
        if input.chars().any(char::is_control) {
            return Err(SelectorError::Control(input.into()));
        }
        if let Some(name) = input.strip_prefix("container:") {
            // Docker shows names with a leading '/' in its API.
            let name = name.strip_prefix('/').unwrap_or(name);
            check_name(input, name)?;
            return Ok(Selector::Container(name.into()));
        }
        if let Some(kv) = input.strip_prefix("label:") {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| SelectorError::BadLabel(input.into()))?;
            if k.is_empty() || k.chars().any(char::is_whitespace) {
                return Err(SelectorError::BadLabel(input.into()));
            }
            return Ok(Selector::Label {
                key: k.into(),
                value: v.into(),
            });
        }
        Err(SelectorError::Unknown(input.into()))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Container(n) => write!(f, "container:{n}"),
            Selector::Label { key, value } => write!(f, "label:{key}={value}"),
        }
    }
}

/// What a rule matches: a CIDR, or the current addresses of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Cidr(Cidr),
    Sel(Selector),
}

impl Target {
    /// True for `container:` and `label:` targets.
    pub fn is_selector(&self) -> bool {
        matches!(self, Target::Sel(_))
    }

    pub fn cidr(&self) -> Option<Cidr> {
        match self {
            Target::Cidr(c) => Some(*c),
            Target::Sel(_) => None,
        }
    }

    pub fn selector(&self) -> Option<&Selector> {
        match self {
            Target::Sel(s) => Some(s),
            Target::Cidr(_) => None,
        }
    }
}

/// True if `s` is written as a selector (`container:...`, `label:...`),
/// whether or not it is a valid one.
pub fn looks_like_selector(s: &str) -> bool {
    s.contains(':')
        && !s.contains("::")
        && s.split(':')
            .next()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_lowercase()) && !p.is_empty())
}

impl FromStr for Target {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, SelectorError> {
        if looks_like_selector(s.trim()) {
            return Ok(Target::Sel(s.trim().parse()?));
        }
        Ok(Target::Cidr(s.parse()?))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cidr(c) => c.fmt(f),
            Target::Sel(s) => s.fmt(f),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a selector resolves to now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The matching containers' names, sorted.
    pub containers: Vec<String>,
    /// Their addresses (IPv4 and IPv6), sorted and deduplicated.
    pub addrs: Vec<IpAddr>,
    /// Their host-side interfaces (ifindexes), sorted.
    pub ifaces: Vec<u32>,
}

impl Resolution {
    /// Nothing matches now: a rule with this target is inactive.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}

/// Why a `container:` selector names no single container.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("no container {name:?}{}", closest_hint(.closest))]
    NotFound { name: String, closest: Vec<String> },
    #[error("{name:?} matches {} containers: {}; give more of the name or id", .candidates.len(), .candidates.join(", "))]
    Ambiguous { name: String, candidates: Vec<String> },
}

fn closest_hint(closest: &[String]) -> String {
    if closest.is_empty() {
        " (pass --inactive to add the rule for a container that is not created yet)".into()
    } else {
        format!(
            "; closest: {} (pass --inactive to add the rule for a container that is not created yet)",
            closest.join(", ")
        )
    }
}

/// Resolves selectors against the containers known now (the container
/// registry implements it; tests use a table).
pub trait Resolve: Send + Sync {
    /// The current resolution of `sel` (empty if nothing matches).
    fn resolve(&self, sel: &Selector) -> Resolution;
    /// Checks that a `container:` selector names exactly one existing
    /// container (running or not); label selectors always pass.
    fn check(&self, sel: &Selector) -> Result<(), LookupError>;
}

/// Resolves nothing: a daemon without a container runtime.
pub struct NoContainers;

impl Resolve for NoContainers {
    fn resolve(&self, _: &Selector) -> Resolution {
        Resolution::default()
    }
    fn check(&self, sel: &Selector) -> Result<(), LookupError> {
        match sel {
            Selector::Container(name) => Err(LookupError::NotFound {
                name: name.clone(),
                closest: Vec::new(),
            }),
            Selector::Label { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_display_and_refuse_bad_input() {
        for ok in [
            "container:web",
            "container:3f2a9c",
            "container:my_app.web-1",
            "label:app=web",
            "label:com.docker.compose.service=web",
            "label:empty=",
        ] {
            let s: Selector = ok.parse().unwrap();
            assert_eq!(s.to_string(), ok);
        }
        assert_eq!(
            "container:/web".parse::<Selector>().unwrap(),
            Selector::Container("web".into())
        );
        for (bad, why) in [
            ("container:", "needs a name"),
            ("container:-web", "letters, digits"),
            ("container:we b", "letters, digits"),
            ("container:web/../x", "letters, digits"),
            ("label:novalue", "label:KEY=VALUE"),
            ("label:=x", "label:KEY=VALUE"),
            ("label:a b=c", "label:KEY=VALUE"),
            ("label:a=b\u{7}", "control characters"),
            ("pod:x", "unknown selector"),
        ] {
            let e = bad.parse::<Selector>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("container:{}", "a".repeat(300));
        assert!(long
            .parse::<Selector>()
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }

    #[test]
    fn targets_are_cidrs_or_selectors() {
        assert!(matches!("10.0.0.0/8".parse::<Target>().unwrap(), Target::Cidr(_)));
        assert!(matches!("2001:2::1".parse::<Target>().unwrap(), Target::Cidr(_)));
        assert!(matches!("::1".parse::<Target>().unwrap(), Target::Cidr(_)));
        assert!(matches!("container:web".parse::<Target>().unwrap(), Target::Sel(_)));
        assert!("10.0.0.0/33"
            .parse::<Target>()
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!("bogus:x"
            .parse::<Target>()
            .unwrap_err()
            .to_string()
            .contains("unknown selector"));
        let t: Target = serde_json::from_str("\"label:app=web\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"label:app=web\"");
    }

    #[test]
    fn lookup_errors_name_the_closest_and_the_candidates() {
        let e = LookupError::NotFound {
            name: "wbe".into(),
            closest: vec!["web".into()],
        };
        assert!(e.to_string().contains("closest: web"), "{e}");
        let e = LookupError::Ambiguous {
            name: "3f".into(),
            candidates: vec!["web (3f2a…)".into(), "db (3f9b…)".into()],
        };
        assert!(e.to_string().contains("matches 2 containers"), "{e}");
    }
}
