//! Request-time policy: Cedar policies, validated against the schema of
//! what the ledger supplies, and the two questions the ledger asks them
//! (may this caller issue this scope; may this agent do this action now).
//!
//! Pure and deterministic: the ledger evaluates policies while it applies a
//! log entry, so every replica must reach the same decision from the same
//! entry. Nothing here reads a clock or the environment; time comes in the
//! query. grantctl uses the same code to validate a policy offline.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request, ResourceConstraint,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};

/// The schema applied when none is given: what the ledger supplies, with a
/// few common tool actions declared.
pub const SCHEMA_DEFAULT: &str = include_str!("schema.cedarschema");

/// The Cedar action of Issue; tool actions are any other name.
pub const ISSUE_ACTION: &str = "issue";
/// The Cedar action of Delegate (a grant holder handing on a sub-grant).
pub const DELEGATE_ACTION: &str = "delegate";

/// Bytes of policy text in one policy set.
pub const POLICY_TEXT_BYTES_MAX: usize = 256 * 1024;
/// Bytes of schema text.
pub const SCHEMA_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Policies in one policy set.
pub const POLICIES_MAX: usize = 2000;
/// Bytes in a policy id (`@id("...")`).
pub const POLICY_ID_BYTES_MAX: usize = 128;
/// (action, resource) pairs whose slice of the policy set is kept; the
/// cache is emptied when it would grow past this.
pub const POLICY_SLICES_CACHED_MAX: usize = 4096;
/// Attributes a tool server may send with one Check.
pub const CHECK_ATTRIBUTES_MAX: usize = 8;
/// Bytes in an attribute name sent with Check.
pub const CHECK_ATTRIBUTE_NAME_BYTES_MAX: usize = 64;
/// Bytes in an attribute value sent with Check.
pub const CHECK_ATTRIBUTE_VALUE_BYTES_MAX: usize = 256;

/// What the decision is when no policy permits and none forbids.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoMatch {
    /// Cedar's own rule: deny unless a policy permits.
    #[default]
    Deny,
    /// Allow unless a policy forbids: for a cluster that adopts policies
    /// one forbid at a time.
    Allow,
}

impl FromStr for NoMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(NoMatch::Deny),
            "allow" => Ok(NoMatch::Allow),
            _ => Err(format!("expected \"deny\" or \"allow\", got {s:?}")),
        }
    }
}

impl NoMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            NoMatch::Deny => "deny",
            NoMatch::Allow => "allow",
        }
    }
}

/// A policy set that did not compile: Cedar's diagnostics, one per line,
/// with the line and column they point at.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A parsed, validated policy set, ready to answer queries.
pub struct Compiled {
    ids: Vec<String>,
    no_match: NoMatch,
    authorizer: Authorizer,
    scopes: ScopeIndex,
    /// The slice of the set each (action, resource) asked about needs.
    slices: Mutex<HashMap<(String, String), Arc<PolicySet>>>,
}

/// The policies by what their scope names: Cedar evaluates every policy of
/// a set, so a request is decided against only those whose action and
/// resource constraints could match it. The others cannot match (a scope
/// that does not match is false before any condition is evaluated, so they
/// cannot err either): the decision is the same, faster.
///
/// `in` constraints are indexed like `==`: the ledger hands Cedar no entity
/// hierarchy (a tool and an action have no parents), so `in X` holds
/// exactly when the entity is X.
struct ScopeIndex {
    policies: Vec<Policy>,
    /// Action id -> policies naming it; and policies with any action.
    by_action: HashMap<String, Vec<usize>>,
    any_action: Vec<usize>,
    /// Tool id -> policies naming it; and policies with any resource (or a
    /// constraint indexed conservatively as any).
    by_resource: HashMap<String, Vec<usize>>,
    any_resource: Vec<usize>,
}

impl ScopeIndex {
    fn new(set: &PolicySet) -> ScopeIndex {
        let mut ix = ScopeIndex {
            policies: Vec::new(),
            by_action: HashMap::new(),
            any_action: Vec::new(),
            by_resource: HashMap::new(),
            any_resource: Vec::new(),
        };
        for p in set.policies() {
            let i = ix.policies.len();
            ix.policies.push(p.clone());
            match p.action_constraint() {
                ActionConstraint::Eq(a) => ix
                    .by_action
                    .entry(a.id().unescaped().to_string())
                    .or_default()
                    .push(i),
                ActionConstraint::In(list) => {
                    for a in list {
                        ix.by_action
                            .entry(a.id().unescaped().to_string())
                            .or_default()
                            .push(i);
                    }
                }
                ActionConstraint::Any => ix.any_action.push(i),
            }
            match p.resource_constraint() {
                ResourceConstraint::Eq(r) | ResourceConstraint::In(r)
                    if r.type_name().to_string() == "Tool" =>
                {
                    ix.by_resource
                        .entry(r.id().unescaped().to_string())
                        .or_default()
                        .push(i)
                }
                _ => ix.any_resource.push(i),
            }
        }
        ix
    }

    /// The policies that could apply to `action` on `resource`.
    fn slice(&self, action: &str, resource: &str) -> PolicySet {
        let actions: BTreeSet<usize> = self
            .by_action
            .get(action)
            .into_iter()
            .flatten()
            .chain(&self.any_action)
            .copied()
            .collect();
        let picked = self
            .by_resource
            .get(resource)
            .into_iter()
            .flatten()
            .chain(&self.any_resource)
            .filter(|i| actions.contains(i))
            .map(|&i| self.policies[i].clone());
        PolicySet::from_policies(picked).expect("policies of one valid set")
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("ids", &self.ids)
            .field("no_match", &self.no_match)
            .finish()
    }
}

/// Parse `schema` and `policies`, give each policy its `@id` (or Cedar's
/// `policyN`), and validate them strictly against the schema.
pub fn compile(policies: &str, schema: &str, no_match: NoMatch) -> Result<Compiled, Invalid> {
    if policies.len() > POLICY_TEXT_BYTES_MAX {
        return Err(Invalid(format!(
            "policy text is {} bytes, more than {POLICY_TEXT_BYTES_MAX} (policy_text_bytes_max)",
            policies.len()
        )));
    }
    if schema.len() > SCHEMA_TEXT_BYTES_MAX {
        return Err(Invalid(format!(
            "schema is {} bytes, more than {SCHEMA_TEXT_BYTES_MAX} (schema_text_bytes_max)",
            schema.len()
        )));
    }
    let schema = match Schema::from_cedarschema_str(schema) {
        Ok((s, _warnings)) => s,
        Err(e) => return Err(Invalid(format!("schema: {}", describe(&e, schema)))),
    };
    let parsed = PolicySet::from_str(policies)
        .map_err(|e| Invalid(format!("policies: {}", describe(&e, policies))))?;
    if let Some(t) = parsed.templates().next() {
        return Err(Invalid(format!(
            "policy {} is a template (it has a ?principal or ?resource slot); \
             only static policies are taken",
            t.id()
        )));
    }
    let count = parsed.policies().count();
    if count > POLICIES_MAX {
        return Err(Invalid(format!(
            "{count} policies, more than {POLICIES_MAX} (policies_max)"
        )));
    }
    let mut set = PolicySet::new();
    let mut ids = Vec::with_capacity(count);
    for p in parsed.policies() {
        let p = match p.annotation("id") {
            Some(id) if id.is_empty() || id.len() > POLICY_ID_BYTES_MAX => {
                return Err(Invalid(format!(
                    "policy {}: @id must be 1-{POLICY_ID_BYTES_MAX} bytes",
                    p.id()
                )))
            }
            Some(id) => p.new_id(PolicyId::new(id)),
            None => p.clone(),
        };
        let id = p.id().to_string();
        set.add(p)
            .map_err(|_| Invalid(format!("two policies have the id {id:?}")))?;
        ids.push(id);
    }
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let lines: Vec<String> = result
            .validation_errors()
            .map(|e| format!("policy {}: {}", e.policy_id(), describe(e, policies)))
            .collect();
        return Err(Invalid(lines.join("\n")));
    }
    Ok(Compiled {
        scopes: ScopeIndex::new(&set),
        ids,
        no_match,
        authorizer: Authorizer::new(),
        slices: Mutex::new(HashMap::new()),
    })
}

/// A diagnostic's message, where it points (line:column) and its help.
fn describe(e: &dyn miette::Diagnostic, src: &str) -> String {
    let mut out = e.to_string();
    if let Some(label) = e.labels().and_then(|mut l| l.next()) {
        let at = label.offset().min(src.len());
        let before = &src[..at];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        out = format!("{out} (at {line}:{col})");
    }
    if let Some(help) = e.help() {
        out = format!("{out}; help: {help}");
    }
    // Some diagnostics (parse errors) nest the real ones.
    if let Some(related) = e.related() {
        for r in related {
            out = format!("{out}\n  {}", describe(r, src));
        }
    }
    out
}

/// A policy decision, and the policies that determined it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The permits that allowed, or the forbids that denied; empty when no
    /// policy matched and the `no_match` rule decided.
    pub policy_ids: Vec<String>,
    /// Policies that failed to evaluate (they are skipped, as Cedar does):
    /// "id: error".
    pub errors: Vec<String>,
}

impl Decision {
    /// One line for the audit entry's reason.
    pub fn summary(&self) -> String {
        let mut s = match (self.allow, self.policy_ids.is_empty()) {
            (true, false) => "policy: permitted".to_string(),
            (false, false) => "policy: forbidden".to_string(),
            (a, true) => format!(
                "policy: no policy matched; {} by default",
                if a { "allowed" } else { "denied" }
            ),
        };
        if !self.errors.is_empty() {
            s.push_str(&format!("; errors: {}", self.errors.join("; ")));
        }
        s
    }
}

/// Issue: may `caller` issue a grant of `actions` on `resource` to `subject`?
pub struct IssueQuery<'a> {
    pub caller: &'a str,
    pub subject: &'a str,
    pub task: &'a str,
    /// The tools the task declared when it began.
    pub declared_tools: &'a [String],
    pub intent: &'a str,
    pub ttl_seconds: u64,
    pub resource: &'a str,
    pub actions: &'a [String],
    pub now_ms: i64,
}

/// Check: may `identity`, holding this grant, do `action` on `resource` now?
pub struct CheckQuery<'a> {
    pub identity: &'a str,
    pub resource: &'a str,
    pub action: &'a str,
    pub task: &'a str,
    /// The tools the grant's task declared when it began.
    pub declared_tools: &'a [String],
    pub intent: &'a str,
    pub grant_id: &'a str,
    pub issuer: &'a str,
    /// What the tool server says about the request (environment, ticket...).
    pub attributes: &'a BTreeMap<String, String>,
    pub now_ms: i64,
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_string())
}

fn set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|v| s(v)))
}

fn record(fields: Vec<(&str, RestrictedExpression)>) -> RestrictedExpression {
    RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_string(), v)))
        .expect("field names are distinct")
}

/// The entry's time as the schema's `Time` record.
fn time(now_ms: i64) -> RestrictedExpression {
    const DAY_MS: i64 = 86_400_000;
    let days = now_ms.div_euclid(DAY_MS);
    let in_day = now_ms.rem_euclid(DAY_MS);
    record(vec![
        ("ms", RestrictedExpression::new_long(now_ms)),
        (
            "hour_utc",
            RestrictedExpression::new_long(in_day / 3_600_000),
        ),
        (
            "minute_utc",
            RestrictedExpression::new_long(in_day / 60_000 % 60),
        ),
        // 1970-01-01 was a Thursday (ISO weekday 4).
        (
            "weekday_utc",
            RestrictedExpression::new_long((days + 3).rem_euclid(7) + 1),
        ),
    ])
}

fn uid(type_name: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(type_name).expect("a type name of the schema"),
        EntityId::new(id),
    )
}

/// The principal entity of a SPIFFE ID (empty parts for anything else).
fn workload(id: &str) -> Entity {
    let (trust_domain, path) = id
        .strip_prefix("spiffe://")
        .map(|rest| match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        })
        .unwrap_or(("", ""));
    let attrs = HashMap::from([
        ("id".to_string(), s(id)),
        ("trust_domain".to_string(), s(trust_domain)),
        ("path".to_string(), s(path)),
    ]);
    Entity::new(uid("Workload", id), attrs, HashSet::new()).expect("literal attributes")
}

fn tool(name: &str) -> Entity {
    let attrs = HashMap::from([("name".to_string(), s(name))]);
    Entity::new(uid("Tool", name), attrs, HashSet::new()).expect("literal attributes")
}

impl Compiled {
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn no_match(&self) -> NoMatch {
        self.no_match
    }

    pub fn issue(&self, q: &IssueQuery<'_>) -> Decision {
        self.issue_as(ISSUE_ACTION, q)
    }

    /// A delegation: the grant holder (`caller`) hands a sub-grant to
    /// `subject`; asked as `Action::"delegate"` with the Issue context.
    pub fn delegate(&self, q: &IssueQuery<'_>) -> Decision {
        self.issue_as(DELEGATE_ACTION, q)
    }

    fn issue_as(&self, action: &str, q: &IssueQuery<'_>) -> Decision {
        let context = vec![
            ("subject", s(q.subject)),
            ("task", s(q.task)),
            ("declared_tools", set(q.declared_tools)),
            ("intent", s(q.intent)),
            (
                "ttl_seconds",
                RestrictedExpression::new_long(i64::try_from(q.ttl_seconds).unwrap_or(i64::MAX)),
            ),
            ("actions", set(q.actions)),
            ("time", time(q.now_ms)),
        ];
        self.decide(q.caller, action, q.resource, context)
    }

    pub fn check(&self, q: &CheckQuery<'_>) -> Decision {
        let request = record(
            q.attributes
                .iter()
                .map(|(k, v)| (k.as_str(), s(v)))
                .collect(),
        );
        let context = vec![
            ("task", s(q.task)),
            ("declared_tools", set(q.declared_tools)),
            ("intent", s(q.intent)),
            ("grant", s(q.grant_id)),
            ("issuer", s(q.issuer)),
            ("time", time(q.now_ms)),
            ("request", request),
        ];
        self.decide(q.identity, q.action, q.resource, context)
    }

    /// The same set, every policy asked every time (what Cedar alone does):
    /// the reference the index is tested against.
    #[cfg(test)]
    fn unindexed(mut self) -> Compiled {
        let n = self.scopes.policies.len();
        self.scopes.by_action.clear();
        self.scopes.by_resource.clear();
        self.scopes.any_action = (0..n).collect();
        self.scopes.any_resource = (0..n).collect();
        self
    }

    /// The slice of the set for (action, resource), cached.
    fn slice(&self, action: &str, resource: &str) -> Arc<PolicySet> {
        let key = (action.to_string(), resource.to_string());
        let mut cache = self.slices.lock().expect("policy slice cache lock");
        if let Some(s) = cache.get(&key) {
            return s.clone();
        }
        if cache.len() >= POLICY_SLICES_CACHED_MAX {
            cache.clear();
        }
        let s = Arc::new(self.scopes.slice(action, resource));
        cache.insert(key, s.clone());
        s
    }

    fn decide(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        context: Vec<(&str, RestrictedExpression)>,
    ) -> Decision {
        let context = Context::from_pairs(context.into_iter().map(|(k, v)| (k.to_string(), v)))
            .expect("context keys are distinct");
        let p = workload(principal);
        let r = tool(resource);
        let request = Request::new(p.uid(), uid("Action", action), r.uid(), context, None)
            .expect("a request without a schema always builds");
        // A principal and a tool with the same id are different entities
        // (different types), so this never holds a duplicate.
        let entities = Entities::from_entities([p, r], None).expect("two distinct entities");
        let slice = self.slice(action, resource);
        let response = self.authorizer.is_authorized(&request, &slice, &entities);
        let determining: BTreeSet<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        // Sorted: the order Cedar reports them in is not part of its
        // contract, and they go into audit entries every replica writes.
        let mut errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        errors.sort();
        let allow = match response.decision() {
            CedarDecision::Allow => true,
            CedarDecision::Deny if determining.is_empty() => self.no_match == NoMatch::Allow,
            CedarDecision::Deny => false,
        };
        Decision {
            allow,
            policy_ids: determining.into_iter().collect(),
            errors,
        }
    }
}

/// Refuse attribute names and values a Check may not carry.
pub fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), String> {
    if attributes.len() > CHECK_ATTRIBUTES_MAX {
        return Err(format!(
            "{} attributes, more than {CHECK_ATTRIBUTES_MAX} (check_attributes_max)",
            attributes.len()
        ));
    }
    for (k, v) in attributes {
        let ident = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident || k.len() > CHECK_ATTRIBUTE_NAME_BYTES_MAX {
            return Err(format!(
                "attribute name {k:?}: 1-{CHECK_ATTRIBUTE_NAME_BYTES_MAX} letters, digits or \
                 '_', not starting with a digit"
            ));
        }
        if v.len() > CHECK_ATTRIBUTE_VALUE_BYTES_MAX || v.chars().any(char::is_control) {
            return Err(format!(
                "attribute {k:?}: value longer than {CHECK_ATTRIBUTE_VALUE_BYTES_MAX} bytes \
                 or with control characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
