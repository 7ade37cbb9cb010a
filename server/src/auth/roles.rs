//! Roles, SPIFFE ID patterns, and the role each RPC requires.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::validate;

/// The roles of DESIGN.md. `Issuer` carries, per caller pattern, the
/// subjects it may issue for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Issuer,
    Checker,
    Revoker,
    Auditor,
    Admin,
    Peer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Issuer => "issuer",
            Role::Checker => "checker",
            Role::Revoker => "revoker",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Peer => "peer",
        }
    }
}

/// A SPIFFE ID pattern: an exact ID (`spiffe://td/a/b`), every ID under a
/// path (`spiffe://td/a/*`), or a whole trust domain (`spiffe://td/*`).
/// Prefixes match whole path segments only: `spiffe://td/a/*` does not
/// match `spiffe://td/ab`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// `spiffe://td/` or `spiffe://td/a/`: what a match starts with.
    Under(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        match s.strip_suffix("/*") {
            Some(base) => {
                // A trust domain alone has no path; check it with one.
                let probe = if base.matches('/').count() == 2 {
                    format!("{base}/x")
                } else {
                    base.to_string()
                };
                validate::spiffe_id("pattern", &probe).map_err(|e| e.to_string())?;
                Ok(Pattern::Under(format!("{base}/")))
            }
            None => {
                validate::spiffe_id("pattern", s).map_err(|e| e.to_string())?;
                Ok(Pattern::Exact(s.to_string()))
            }
        }
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            Pattern::Exact(p) => p == id,
            Pattern::Under(prefix) => id.len() > prefix.len() && id.starts_with(prefix.as_str()),
        }
    }
}

/// The `[roles]` section of the config file, as written.
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    #[serde(default)]
    pub issuer: Vec<IssuerConfig>,
    #[serde(default)]
    pub checker: Vec<String>,
    #[serde(default)]
    pub revoker: Vec<String>,
    #[serde(default)]
    pub auditor: Vec<String>,
    #[serde(default)]
    pub admin: Vec<String>,
    #[serde(default)]
    pub peer: Vec<String>,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Callers allowed to issue.
    pub callers: Vec<String>,
    /// Subjects those callers may issue grants for.
    pub subjects: Vec<String>,
}

/// Check a mapping as it travels in the log (canonical JSON): within
/// `ROLES_JSON_BYTES_MAX`, valid, and without `peer`, which is never
/// replicated.
pub fn check_replicated(json: &str) -> Result<RolesConfig, String> {
    if json.len() > crate::limits::ROLES_JSON_BYTES_MAX {
        return Err(format!(
            "role mapping longer than {} bytes",
            crate::limits::ROLES_JSON_BYTES_MAX
        ));
    }
    let c: RolesConfig = serde_json::from_str(json).map_err(|e| format!("role mapping: {e}"))?;
    if !c.peer.is_empty() {
        return Err(
            "the peer role comes from each node's config file and cannot be \
                    changed through the cluster (a change could cut the nodes off from \
                    each other)"
                .into(),
        );
    }
    RoleMap::from_config(&c)?;
    Ok(c)
}

/// The canonical JSON of a mapping: what `check_replicated` reads.
pub fn to_replicated(c: &RolesConfig) -> String {
    serde_json::to_string(c).expect("roles serialize")
}

/// Parsed, checked role mapping.
#[derive(Debug, Default, Clone)]
pub struct RoleMap {
    issuers: Vec<(Vec<Pattern>, Vec<Pattern>)>,
    plain: BTreeMap<Role, Vec<Pattern>>,
}

fn patterns(role: &str, list: &[String]) -> Result<Vec<Pattern>, String> {
    list.iter()
        .map(|p| Pattern::parse(p).map_err(|e| format!("roles.{role}: {e}")))
        .collect()
}

impl RoleMap {
    pub fn from_config(c: &RolesConfig) -> Result<RoleMap, String> {
        let count = c
            .issuer
            .iter()
            .map(|i| i.callers.len() + i.subjects.len())
            .sum::<usize>()
            + c.checker.len()
            + c.revoker.len()
            + c.auditor.len()
            + c.admin.len()
            + c.peer.len();
        if count > crate::limits::ROLE_PATTERNS_MAX {
            return Err(format!(
                "{count} patterns; at most {} (role_patterns_max)",
                crate::limits::ROLE_PATTERNS_MAX
            ));
        }
        let mut m = RoleMap::default();
        for i in &c.issuer {
            if i.callers.is_empty() || i.subjects.is_empty() {
                return Err("roles.issuer: name callers and subjects".into());
            }
            m.issuers.push((
                patterns("issuer", &i.callers)?,
                patterns("issuer", &i.subjects)?,
            ));
        }
        for (role, name, list) in [
            (Role::Checker, "checker", &c.checker),
            (Role::Revoker, "revoker", &c.revoker),
            (Role::Auditor, "auditor", &c.auditor),
            (Role::Admin, "admin", &c.admin),
            (Role::Peer, "peer", &c.peer),
        ] {
            m.plain.insert(role, patterns(name, list)?);
        }
        Ok(m)
    }

    /// Whether `caller` holds `role` (for Issuer: for some subject).
    pub fn has(&self, caller: &str, role: Role) -> bool {
        match role {
            Role::Issuer => self
                .issuers
                .iter()
                .any(|(callers, _)| callers.iter().any(|p| p.matches(caller))),
            r => self
                .plain
                .get(&r)
                .is_some_and(|ps| ps.iter().any(|p| p.matches(caller))),
        }
    }

    /// Whether `caller` may issue a grant for `subject`.
    pub fn may_issue_for(&self, caller: &str, subject: &str) -> bool {
        self.issuers.iter().any(|(callers, subjects)| {
            callers.iter().any(|p| p.matches(caller)) && subjects.iter().any(|p| p.matches(subject))
        })
    }
}

/// What an RPC requires of its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Open to any authenticated caller (health, reflection, status).
    Anyone,
    Role(Role),
    /// Check: the checker role, or the grant's own subject presenting its
    /// token (the handler compares the identity).
    CheckerOrSubject,
    /// Get and List: an issuer, revoker or auditor.
    Reader,
    /// Reading or dry-running the policy set: an admin or an auditor.
    AdminOrAuditor,
    /// Watch: a checker (a tool server caching allows), issuer, revoker
    /// or auditor; not a workload, whose grants are its own business.
    Watcher,
    /// Completing or aborting a task: a revoker, or an issuer (the handler
    /// lets an issuer close only the tasks it owns).
    TaskCloser,
    /// Renew and Delegate: any authenticated caller reaches the handler,
    /// which lets only the grant's issuer or its subject renew it, and only
    /// its subject delegate from it.
    IssuerOrSubject,
}

/// The requirement of a gRPC method path; `None` for a path we do not
/// serve (refused).
pub fn need(path: &str) -> Option<Need> {
    let (service, method) = path.trim_start_matches('/').rsplit_once('/')?;
    Some(match (service, method) {
        ("grantledger.v1.Grants", "Issue") => Need::Role(Role::Issuer),
        ("grantledger.v1.Grants", "Check") => Need::CheckerOrSubject,
        ("grantledger.v1.Grants", "Revoke") => Need::Role(Role::Revoker),
        ("grantledger.v1.Grants", "Renew") => Need::IssuerOrSubject,
        // The parent grant's holder, whatever its roles (the handler checks).
        ("grantledger.v1.Grants", "Delegate") => Need::IssuerOrSubject,
        ("grantledger.v1.Grants", "BeginTask") => Need::Role(Role::Issuer),
        ("grantledger.v1.Grants", "CompleteTask" | "AbortTask") => Need::TaskCloser,
        ("grantledger.v1.Grants", "Get" | "List" | "GetTask") => Need::Reader,
        ("grantledger.v1.Grants", "Watch") => Need::Watcher,
        // Public keys, for offline verification by any tool server.
        ("grantledger.v1.Grants", "Jwks") => Need::Anyone,
        ("grantledger.v1.Audit", _) => Need::Role(Role::Auditor),
        ("grantledger.v1.Policy", "Apply") => Need::Role(Role::Admin),
        ("grantledger.v1.Policy", "Get" | "Validate") => Need::AdminOrAuditor,
        ("grantledger.v1.Cluster", "Status") => Need::Anyone,
        ("grantledger.v1.Cluster", _) => Need::Role(Role::Admin),
        ("grantledger.v1.raft.RaftPeer", _) => Need::Role(Role::Peer),
        ("grpc.health.v1.Health", _) => Need::Anyone,
        (s, _) if s.starts_with("grpc.reflection.") => Need::Anyone,
        _ => return None,
    })
}

impl RoleMap {
    /// May `caller` call `path` at all? (Issue's subject and Check's
    /// identity are checked again by the handlers.)
    pub fn allows(&self, caller: &str, path: &str) -> bool {
        match need(path) {
            None => false,
            Some(Need::Anyone) => true,
            Some(Need::Role(r)) => self.has(caller, r),
            // A workload may check its own grants; the handler denies a
            // token presented for anyone else.
            Some(Need::CheckerOrSubject) => true,
            Some(Need::IssuerOrSubject) => true,
            Some(Need::Reader) => [Role::Issuer, Role::Revoker, Role::Auditor]
                .into_iter()
                .any(|r| self.has(caller, r)),
            Some(Need::AdminOrAuditor) => {
                self.has(caller, Role::Admin) || self.has(caller, Role::Auditor)
            }
            Some(Need::Watcher) => [Role::Checker, Role::Issuer, Role::Revoker, Role::Auditor]
                .into_iter()
                .any(|r| self.has(caller, r)),
            Some(Need::TaskCloser) => {
                self.has(caller, Role::Revoker) || self.has(caller, Role::Issuer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> RoleMap {
        let c: RolesConfig = toml::from_str(
            r#"
            checker = ["spiffe://example.org/tool/*"]
            revoker = ["spiffe://example.org/orchestrator"]
            auditor = ["spiffe://audit.example.org/*"]
            admin = ["spiffe://example.org/ops/sre"]
            peer = ["spiffe://example.org/grantd/*"]
            [[issuer]]
            callers = ["spiffe://example.org/orchestrator"]
            subjects = ["spiffe://example.org/agent/*"]
            "#,
        )
        .unwrap();
        RoleMap::from_config(&c).unwrap()
    }

    #[test]
    fn patterns_match_whole_segments_and_trust_domains() {
        let p = Pattern::parse("spiffe://example.org/agent/*").unwrap();
        assert!(p.matches("spiffe://example.org/agent/planner"));
        assert!(p.matches("spiffe://example.org/agent/a/b"));
        assert!(!p.matches("spiffe://example.org/agent"));
        assert!(!p.matches("spiffe://example.org/agents/x"));
        assert!(!p.matches("spiffe://other.org/agent/planner"));
        let td = Pattern::parse("spiffe://example.org/*").unwrap();
        assert!(td.matches("spiffe://example.org/x"));
        assert!(!td.matches("spiffe://example.org.evil/x"));
        let exact = Pattern::parse("spiffe://example.org/ops/sre").unwrap();
        assert!(exact.matches("spiffe://example.org/ops/sre"));
        assert!(!exact.matches("spiffe://example.org/ops/sre/x"));
        for bad in [
            "example.org/x",
            "spiffe://Example.org/x",
            "spiffe://td/a/../b/*",
            "spiffe:///*",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_rpc_needs_its_role() {
        let m = map();
        let orch = "spiffe://example.org/orchestrator";
        let tool = "spiffe://example.org/tool/github";
        let peer = "spiffe://example.org/grantd/node-1";
        let agent = "spiffe://example.org/agent/planner";
        assert!(m.allows(orch, "/grantledger.v1.Grants/Issue"));
        assert!(!m.allows(tool, "/grantledger.v1.Grants/Issue"));
        assert!(m.may_issue_for(orch, agent));
        assert!(!m.may_issue_for(orch, "spiffe://example.org/tool/github"));
        assert!(m.allows(orch, "/grantledger.v1.Grants/Revoke"));
        assert!(!m.allows(tool, "/grantledger.v1.Grants/CompleteTask"));
        assert!(!m.allows(tool, "/grantledger.v1.Grants/AbortTask"));
        assert!(!m.allows(tool, "/grantledger.v1.Grants/BeginTask"));
        assert!(m.allows(orch, "/grantledger.v1.Grants/BeginTask"));
        assert!(m.allows(orch, "/grantledger.v1.Grants/AbortTask"));
        assert!(!m.allows(agent, "/grantledger.v1.Grants/GetTask"));
        assert!(m.allows(agent, "/grantledger.v1.Grants/Check"));
        assert!(m.allows(orch, "/grantledger.v1.Grants/List"));
        assert!(!m.allows(agent, "/grantledger.v1.Grants/Get"));
        assert!(m.allows(
            "spiffe://audit.example.org/alice",
            "/grantledger.v1.Audit/Export"
        ));
        assert!(!m.allows(orch, "/grantledger.v1.Audit/Export"));
        assert!(m.allows(
            "spiffe://example.org/ops/sre",
            "/grantledger.v1.Policy/Apply"
        ));
        assert!(!m.allows(
            "spiffe://audit.example.org/alice",
            "/grantledger.v1.Policy/Apply"
        ));
        assert!(m.allows(
            "spiffe://audit.example.org/alice",
            "/grantledger.v1.Policy/Get"
        ));
        assert!(!m.allows(orch, "/grantledger.v1.Policy/Get"));
        assert!(m.allows(tool, "/grantledger.v1.Grants/Watch"));
        assert!(!m.allows(agent, "/grantledger.v1.Grants/Watch"));
        assert!(m.allows(
            "spiffe://example.org/ops/sre",
            "/grantledger.v1.Cluster/Remove"
        ));
        assert!(!m.allows(peer, "/grantledger.v1.Cluster/Remove"));
        assert!(m.allows(agent, "/grantledger.v1.Cluster/Status"));
        // A peer certificate cannot issue; a client certificate cannot speak Raft.
        assert!(!m.allows(peer, "/grantledger.v1.Grants/Issue"));
        assert!(m.allows(peer, "/grantledger.v1.raft.RaftPeer/AppendEntries"));
        assert!(!m.allows(orch, "/grantledger.v1.raft.RaftPeer/AppendEntries"));
        assert!(m.allows(agent, "/grpc.health.v1.Health/Check"));
        assert!(!m.allows(orch, "/grantledger.v1.Grants/Nope"));
        assert!(!m.allows(orch, "/unknown.Service/Method"));
    }

    #[test]
    fn a_bad_mapping_is_refused_with_its_place() {
        let c: RolesConfig = toml::from_str(r#"admin = ["spiffe://example.org"]"#).unwrap();
        let e = RoleMap::from_config(&c).unwrap_err();
        assert!(e.starts_with("roles.admin:"), "{e}");
        let c: RolesConfig =
            toml::from_str("[[issuer]]\ncallers = []\nsubjects = [\"spiffe://a/b\"]").unwrap();
        assert!(RoleMap::from_config(&c).is_err());
        assert!(toml::from_str::<RolesConfig>("auditors = []").is_err());
    }
}
