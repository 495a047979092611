//! Who may write and read which documents: a node's [`Identity`] (name, role and site, from
//! its fleet certificate) against the fleet's [`Rules`].
//!
//! Every receiver checks a remote change against the rules of its **author** (whose identity
//! its signed authorship statement proves), never of the peer that relayed it; a sender only
//! sends a document, or names it in a summary, to a peer that may read it (residency). The
//! rules must be the same on every node of a fleet: a node whose rules refuse what another's
//! allow refuses that node's changes (and the session that carries them) for ever.

use std::fmt;

use crate::id::{DocId, NodeName};

/// What a node is in the fleet (its certificate's role).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A cloud node.
    Cloud,
    /// A gateway.
    Gateway,
    /// An edge node.
    Edge,
}

impl Role {
    /// The role as certificates and configurations write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cloud => "cloud",
            Role::Gateway => "gateway",
            Role::Edge => "edge",
        }
    }

    /// Parses `cloud`, `gateway` or `edge`.
    pub fn parse(s: &str) -> Option<Role> {
        s.parse().ok()
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "cloud" => Ok(Role::Cloud),
            "gateway" => Ok(Role::Gateway),
            "edge" => Ok(Role::Edge),
            _ => Err(format!(
                "unknown role {s:?}; expected cloud, gateway or edge"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a node is: what its fleet certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Node name.
    pub name: NodeName,
    /// Role.
    pub role: Role,
    /// Site, if the certificate names one.
    pub site: Option<String>,
}

impl Identity {
    /// An identity.
    pub fn new(name: NodeName, role: Role, site: Option<&str>) -> Identity {
        Identity {
            name,
            role,
            site: site.map(str::to_string),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.name, self.role)?;
        if let Some(s) = &self.site {
            write!(f, ", site {s}")?;
        }
        f.write_str(")")
    }
}

/// A document-id pattern: `/`-separated segments, each a literal, `*` (any one segment),
/// `{site}` or `{name}` (the node's site or name; a node without a site matches no `{site}`),
/// and a last segment `**` matching one or more further segments. `**` alone matches every
/// document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    rest: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Site,
    Name,
}

/// A pattern or rule that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

impl Pattern {
    /// Parses a pattern.
    pub fn parse(s: &str) -> Result<Pattern, RuleError> {
        if s.is_empty() || s.len() > 256 {
            return Err(RuleError(format!("pattern {s:?} must be 1 to 256 bytes")));
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut segments = Vec::new();
        let mut rest = false;
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => {
                    rest = true;
                    continue;
                }
                "**" => {
                    return Err(RuleError(format!(
                        "pattern {s:?}: ** may only be the last segment"
                    )))
                }
                "*" => Segment::Any,
                "{site}" => Segment::Site,
                "{name}" => Segment::Name,
                lit => {
                    if lit.is_empty()
                        || lit == "."
                        || lit == ".."
                        || !lit
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    {
                        return Err(RuleError(format!(
                            "pattern {s:?}: segment {lit:?} is neither a document-id segment nor *, **, {{site}} or {{name}}"
                        )));
                    }
                    Segment::Literal(lit.to_string())
                }
            };
            segments.push(seg);
        }
        Ok(Pattern { segments, rest })
    }

    /// Whether `doc` matches for a node with this identity.
    pub fn matches(&self, doc: &DocId, who: &Identity) -> bool {
        let parts: Vec<&str> = doc.as_str().split('/').collect();
        if parts.len() < self.segments.len()
            || (!self.rest && parts.len() != self.segments.len())
            || (self.rest && parts.len() == self.segments.len())
        {
            return false;
        }
        self.segments
            .iter()
            .zip(&parts)
            .all(|(seg, part)| match seg {
                Segment::Literal(l) => l == part,
                Segment::Any => true,
                Segment::Site => who.site.as_deref() == Some(*part),
                Segment::Name => who.name.as_str() == *part,
            })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.clone(),
                Segment::Any => "*".into(),
                Segment::Site => "{site}".into(),
                Segment::Name => "{name}".into(),
            })
            .collect();
        if self.rest {
            parts.push("**".into());
        }
        f.write_str(&parts.join("/"))
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Receive and hold the document.
    Read,
    /// Author changes to it.
    Write,
}

/// One rule: nodes of `role` (any role when `None`) at `site` (any site when `None`) may read
/// and/or write the documents `docs` matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The role it applies to; `None`: every role.
    pub role: Option<Role>,
    /// The site it applies to; `None`: every site (and nodes without one).
    pub site: Option<String>,
    /// The documents.
    pub docs: Pattern,
    /// May read.
    pub read: bool,
    /// May write. Writing implies reading: a writer holds what it wrote.
    pub write: bool,
}

impl Rule {
    fn applies(&self, who: &Identity) -> bool {
        self.role.is_none_or(|r| r == who.role)
            && self
                .site
                .as_deref()
                .is_none_or(|s| who.site.as_deref() == Some(s))
    }
}

/// The fleet's rules: a node may do what any rule that applies to it allows; nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Default for Rules {
    /// Cloud nodes read and write everything; gateways and edge nodes read and write the
    /// documents under their site (`<site>/...`), and a node without a site nothing.
    fn default() -> Rules {
        let all = Pattern::parse("**").expect("valid");
        let site = Pattern::parse("{site}/**").expect("valid");
        let rule = |role, docs: &Pattern| Rule {
            role: Some(role),
            site: None,
            docs: docs.clone(),
            read: true,
            write: true,
        };
        Rules(vec![
            rule(Role::Cloud, &all),
            rule(Role::Gateway, &site),
            rule(Role::Edge, &site),
        ])
    }
}

impl Rules {
    /// Whether `who` may `access` `doc`.
    pub fn allows(&self, who: &Identity, doc: &DocId, access: Access) -> bool {
        self.0.iter().any(|r| {
            r.applies(who)
                && match access {
                    Access::Read => r.read || r.write,
                    Access::Write => r.write,
                }
                && r.docs.matches(doc, who)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, role: Role, site: Option<&str>) -> Identity {
        Identity::new(NodeName::new(name).unwrap(), role, site)
    }

    fn doc(s: &str) -> DocId {
        DocId::new(s).unwrap()
    }

    #[test]
    fn default_rules() {
        let r = Rules::default();
        let cloud = id("cloud", Role::Cloud, None);
        let gw_a = id("gw-a", Role::Gateway, Some("site-a"));
        let edge_a = id("e-a", Role::Edge, Some("site-a"));
        let gw_b = id("gw-b", Role::Gateway, Some("site-b"));
        let lost = id("gw-x", Role::Gateway, None);
        let a = doc("site-a/temp-1/_b.0000000000000000.3600000");
        for access in [Access::Read, Access::Write] {
            assert!(r.allows(&cloud, &a, access));
            assert!(r.allows(&cloud, &doc("fleet/config"), access));
            assert!(r.allows(&gw_a, &a, access));
            assert!(r.allows(&edge_a, &a, access));
            assert!(!r.allows(&gw_b, &a, access));
            assert!(!r.allows(&lost, &a, access));
            assert!(
                !r.allows(&gw_a, &doc("site-a"), access),
                "the site itself is no document of it"
            );
            assert!(!r.allows(&gw_a, &doc("site-ab/x"), access));
            assert!(!r.allows(&gw_a, &doc("fleet/config"), access));
        }
    }

    #[test]
    fn patterns() {
        let who = id("gw-1", Role::Gateway, Some("s1"));
        let m = |p: &str, d: &str| Pattern::parse(p).unwrap().matches(&doc(d), &who);
        assert!(m("**", "a"));
        assert!(m("**", "a/b/c"));
        assert!(m("a/*", "a/b"));
        assert!(!m("a/*", "a/b/c"));
        assert!(!m("a/*", "a"));
        assert!(m("{site}/{name}/**", "s1/gw-1/x"));
        assert!(!m("{site}/{name}/**", "s1/gw-2/x"));
        assert!(m("fleet/config", "fleet/config"));
        assert!(!m("fleet/config", "fleet/config/x"));
        for bad in ["", "a/**/b", "a//b", "a/../b", "a/{other}", "a b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Pattern::parse("{site}/*/**").unwrap().to_string(),
            "{site}/*/**"
        );
    }

    #[test]
    fn read_only_rules_and_site_scoped_rules() {
        let r = Rules(vec![
            Rule {
                role: None,
                site: None,
                docs: Pattern::parse("fleet/**").unwrap(),
                read: true,
                write: false,
            },
            Rule {
                role: Some(Role::Gateway),
                site: Some("s1".into()),
                docs: Pattern::parse("shared/**").unwrap(),
                read: false,
                write: true,
            },
        ]);
        let g1 = id("g1", Role::Gateway, Some("s1"));
        let g2 = id("g2", Role::Gateway, Some("s2"));
        assert!(r.allows(&g1, &doc("fleet/config"), Access::Read));
        assert!(!r.allows(&g1, &doc("fleet/config"), Access::Write));
        assert!(r.allows(&g1, &doc("shared/x"), Access::Write));
        assert!(
            r.allows(&g1, &doc("shared/x"), Access::Read),
            "a writer reads"
        );
        assert!(!r.allows(&g2, &doc("shared/x"), Access::Read));
    }
}
