use super::*;

const EXAMPLES: &str = include_str!("../../deploy/policy/policies.cedar");

const ORCH: &str = "spiffe://example.org/orchestrator";
const AGENT: &str = "spiffe://example.org/agent/planner";

/// 2026-11-30 was a Monday; hours in UTC.
fn monday_at(hour: i64) -> i64 {
    1_795_996_800_000 + hour * 3_600_000
}

/// The tools task "t1" declared; "wiki" is outside them.
const DECLARED: &[&str] = &["github", "db", "prod/db"];

fn declared() -> Vec<String> {
    DECLARED.iter().map(|t| t.to_string()).collect()
}

fn examples() -> Compiled {
    compile(EXAMPLES, SCHEMA_DEFAULT, NoMatch::Deny).expect("the examples compile")
}

fn issue(
    c: &Compiled,
    caller: &str,
    resource: &str,
    intent: &str,
    actions: &[&str],
    at: i64,
) -> Decision {
    let actions: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    c.issue(&IssueQuery {
        caller,
        subject: AGENT,
        task: "t1",
        declared_tools: &declared(),
        intent,
        ttl_seconds: 300,
        resource,
        actions: &actions,
        now_ms: at,
    })
}

fn check(c: &Compiled, action: &str, resource: &str, attrs: &[(&str, &str)], at: i64) -> Decision {
    let attributes = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c.check(&CheckQuery {
        identity: AGENT,
        resource,
        action,
        task: "t1",
        declared_tools: &declared(),
        intent: "triage",
        grant_id: "g1",
        issuer: ORCH,
        attributes: &attributes,
        now_ms: at,
    })
}

#[test]
fn time_fields_follow_the_entry_time() {
    assert_eq!(monday_at(0) % 86_400_000, 0);
    let c = compile(
        "permit (principal, action, resource) when { context.time.weekday_utc == 1 && context.time.hour_utc == 10 && context.time.minute_utc == 30 };",
        SCHEMA_DEFAULT,
        NoMatch::Deny,
    )
    .unwrap();
    assert!(check(&c, "read", "github", &[], monday_at(10) + 30 * 60_000).allow);
    assert!(!check(&c, "read", "github", &[], monday_at(10) + 31 * 60_000).allow);
    assert!(
        !check(&c, "read", "github", &[], monday_at(10 + 24)).allow,
        "Tuesday"
    );
}

#[test]
fn only_the_orchestrator_issues() {
    let c = examples();
    let d = issue(&c, ORCH, "github", "triage", &["read"], monday_at(10));
    assert!(d.allow, "{d:?}");
    assert_eq!(d.policy_ids, vec!["orchestrator-issues"]);
    let d = issue(
        &c,
        "spiffe://example.org/ci",
        "github",
        "triage",
        &["read"],
        monday_at(10),
    );
    assert!(!d.allow);
    assert!(d.policy_ids.is_empty(), "no permit matched: {d:?}");
}

#[test]
fn nothing_outside_the_task_declared_tools() {
    let c = examples();
    let d = issue(&c, ORCH, "wiki", "triage", &["read"], monday_at(10));
    assert_eq!(
        (d.allow, d.policy_ids),
        (false, vec!["declared-tools-only".to_string()])
    );
    let d = check(&c, "read", "wiki", &[], monday_at(10));
    assert_eq!(
        (d.allow, d.policy_ids),
        (false, vec!["declared-tools-only".to_string()])
    );
    assert!(check(&c, "read", "github", &[], monday_at(10)).allow);
}

#[test]
fn production_grants_live_ten_minutes() {
    let c = examples();
    let actions = vec!["read".to_string()];
    let ask = |ttl_seconds: u64| {
        c.issue(&IssueQuery {
            caller: ORCH,
            subject: AGENT,
            task: "t1",
            declared_tools: &declared(),
            intent: "fix OPS-1",
            ttl_seconds,
            resource: "prod/db",
            actions: &actions,
            now_ms: monday_at(10),
        })
    };
    assert!(ask(600).allow);
    let d = ask(601);
    assert_eq!(
        (d.allow, d.policy_ids),
        (false, vec!["prod-grants-live-ten-minutes".to_string()])
    );
}

#[test]
fn agents_delegate_to_agents_only() {
    let c = examples();
    let ask = |caller: &str, to: &str| {
        let actions = vec!["read".to_string()];
        c.delegate(&IssueQuery {
            caller,
            subject: to,
            task: "t1",
            declared_tools: &declared(),
            intent: "triage",
            ttl_seconds: 60,
            resource: "github",
            actions: &actions,
            now_ms: monday_at(10),
        })
    };
    let d = ask(AGENT, "spiffe://example.org/agent/helper");
    assert_eq!(
        (d.allow, d.policy_ids),
        (true, vec!["agents-delegate-to-agents".to_string()])
    );
    // Not to a tool, and "agents-use-grants" does not let it through.
    let d = ask(AGENT, "spiffe://example.org/tool/github");
    assert_eq!((d.allow, d.policy_ids), (false, Vec::<String>::new()));
    assert!(!ask(ORCH, "spiffe://example.org/agent/helper").allow);
}

#[test]
fn production_needs_a_ticket_in_the_intent() {
    let c = examples();
    let d = issue(&c, ORCH, "prod/db", "look around", &["read"], monday_at(10));
    assert!(!d.allow);
    assert_eq!(d.policy_ids, vec!["prod-needs-ticket"]);
    assert!(
        issue(
            &c,
            ORCH,
            "prod/db",
            "fix OPS-1234",
            &["read"],
            monday_at(10)
        )
        .allow
    );
}

#[test]
fn no_writes_outside_business_hours() {
    let c = examples();
    assert!(issue(&c, ORCH, "github", "x", &["read", "write"], monday_at(10)).allow);
    let d = issue(&c, ORCH, "github", "x", &["read", "write"], monday_at(20));
    assert_eq!(d.policy_ids, vec!["writes-in-business-hours-issue"]);
    assert!(issue(&c, ORCH, "github", "x", &["read"], monday_at(20)).allow);
    assert!(check(&c, "write", "github", &[], monday_at(16)).allow);
    let d = check(&c, "write", "github", &[], monday_at(17));
    assert!(!d.allow);
    assert_eq!(d.policy_ids, vec!["writes-in-business-hours"]);
    // Saturday.
    assert!(!check(&c, "write", "github", &[], monday_at(5 * 24 + 10)).allow);
    assert!(check(&c, "read", "github", &[], monday_at(20)).allow);
}

#[test]
fn checks_in_production_need_a_ticket_from_the_tool_server() {
    let c = examples();
    let prod = [("environment", "production")];
    let d = check(&c, "read", "db", &prod, monday_at(10));
    assert_eq!(
        (d.allow, d.policy_ids.clone()),
        (false, vec!["prod-checks-need-ticket".to_string()])
    );
    let d = check(
        &c,
        "read",
        "db",
        &[("environment", "production"), ("ticket", "OPS-1")],
        monday_at(10),
    );
    assert_eq!(
        (d.allow, d.policy_ids),
        (true, vec!["agents-use-grants".to_string()])
    );
    assert!(
        check(
            &c,
            "read",
            "db",
            &[("environment", "staging")],
            monday_at(10)
        )
        .allow
    );
}

#[test]
fn no_match_decides_when_no_policy_matches() {
    let forbid_prod =
        r#"forbid (principal, action, resource) when { resource.name like "prod/*" };"#;
    let deny = compile(forbid_prod, SCHEMA_DEFAULT, NoMatch::Deny).unwrap();
    let allow = compile(forbid_prod, SCHEMA_DEFAULT, NoMatch::Allow).unwrap();
    assert!(!check(&deny, "read", "github", &[], 0).allow);
    let d = check(&allow, "read", "github", &[], 0);
    assert!(d.allow && d.policy_ids.is_empty());
    let d = check(&allow, "read", "prod/db", &[], 0);
    assert!(!d.allow);
    assert_eq!(d.policy_ids, vec!["policy0"]);
}

#[test]
fn invalid_policies_are_refused_with_diagnostics() {
    let e = compile(
        "permit (principal, action, resource) when { ",
        SCHEMA_DEFAULT,
        NoMatch::Deny,
    )
    .unwrap_err();
    assert!(e.0.starts_with("policies:"), "{e}");
    assert!(e.0.contains("1:"), "points at a line: {e}");
    // Parses, but the schema has no such attribute.
    let e = compile(
        "@id(\"bad\")\npermit (principal, action, resource) when { principal.team == \"x\" };",
        SCHEMA_DEFAULT,
        NoMatch::Deny,
    )
    .unwrap_err();
    assert!(e.0.contains("policy bad:") && e.0.contains("team"), "{e}");
    assert!(e.0.contains("(at 2:"), "{e}");
    // An action the schema does not declare.
    let e = compile(
        r#"permit (principal, action == Action::"deploy", resource);"#,
        SCHEMA_DEFAULT,
        NoMatch::Deny,
    )
    .unwrap_err();
    assert!(e.0.contains("deploy"), "{e}");
    let e = compile(
        "@id(\"a\") permit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);",
        SCHEMA_DEFAULT,
        NoMatch::Deny,
    )
    .unwrap_err();
    assert!(e.0.contains("two policies have the id \"a\""), "{e}");
    let e = compile(
        "permit (principal == ?principal, action, resource);",
        SCHEMA_DEFAULT,
        NoMatch::Deny,
    )
    .unwrap_err();
    assert!(e.0.contains("template"), "{e}");
    let e = compile("", "entity A = { x: Nope };", NoMatch::Deny).unwrap_err();
    assert!(e.0.starts_with("schema:"), "{e}");
    let big = "//".repeat(POLICY_TEXT_BYTES_MAX);
    assert!(compile(&big, SCHEMA_DEFAULT, NoMatch::Deny)
        .unwrap_err()
        .0
        .contains("policy_text_bytes_max"));
}

#[test]
fn a_declared_action_of_the_users_schema_validates() {
    let schema = SCHEMA_DEFAULT.replace(r#""execute""#, r#""execute", "deploy""#);
    let c = compile(
        r#"permit (principal, action == Action::"deploy", resource) when { context.request has ticket };"#,
        &schema,
        NoMatch::Deny,
    )
    .unwrap();
    assert!(check(&c, "deploy", "k8s", &[("ticket", "OPS-9")], 0).allow);
    assert!(!check(&c, "deploy", "k8s", &[], 0).allow);
}

#[test]
fn attributes_are_checked() {
    let ok: BTreeMap<String, String> = [("environment".to_string(), "prod".to_string())].into();
    assert!(check_attributes(&ok).is_ok());
    for bad in ["", "1x", "a-b", "a b"] {
        let m: BTreeMap<String, String> = [(bad.to_string(), "v".to_string())].into();
        assert!(check_attributes(&m).is_err(), "{bad:?}");
    }
    let m: BTreeMap<String, String> = [("a".to_string(), "x\n".to_string())].into();
    assert!(check_attributes(&m).is_err());
    let m: BTreeMap<String, String> = (0..=CHECK_ATTRIBUTES_MAX)
        .map(|i| (format!("a{i}"), String::new()))
        .collect();
    assert!(check_attributes(&m)
        .unwrap_err()
        .contains("check_attributes_max"));
}

#[test]
fn the_same_query_gives_the_same_decision() {
    let c = examples();
    let a = check(
        &c,
        "write",
        "github",
        &[("environment", "production")],
        monday_at(12),
    );
    for _ in 0..10 {
        assert_eq!(
            check(
                &c,
                "write",
                "github",
                &[("environment", "production")],
                monday_at(12)
            ),
            a
        );
    }
}

#[test]
fn the_scope_index_decides_as_the_whole_set() {
    let text = format!(
        "{EXAMPLES}\n{}",
        r#"
@id("db-write") permit (principal, action == Action::"write", resource == Tool::"db");
@id("either") permit (principal, action in [Action::"read", Action::"delete"], resource in Tool::"wiki");
@id("ticket-x") forbid (principal, action == Action::"execute", resource) when { context.request has ticket && context.request.ticket == "x" };
@id("overflows") forbid (principal, action == Action::"issue", resource) when { context.ttl_seconds * 9223372036854775807 > 0 };
@id("no-db-delete") forbid (principal, action == Action::"delete", resource == Tool::"db");
"#
    );
    let indexed = compile(&text, SCHEMA_DEFAULT, NoMatch::Deny).unwrap();
    let whole = compile(&text, SCHEMA_DEFAULT, NoMatch::Deny)
        .unwrap()
        .unindexed();
    for action in ["read", "write", "delete", "execute", "issue", "other"] {
        for resource in ["db", "wiki", "prod/db", "github", "Tool"] {
            for attrs in [
                &[][..],
                &[("environment", "production")][..],
                &[("ticket", "x")][..],
            ] {
                for at in [monday_at(10), monday_at(20)] {
                    let a = check(&indexed, action, resource, attrs, at);
                    let b = check(&whole, action, resource, attrs, at);
                    assert_eq!(a, b, "{action} {resource} {attrs:?}");
                }
            }
            let a = issue(&indexed, ORCH, resource, "OPS-1", &[action], monday_at(10));
            let b = issue(&whole, ORCH, resource, "OPS-1", &[action], monday_at(10));
            assert_eq!(a, b, "issue {action} {resource}");
            // A policy that fails to evaluate is skipped and named.
            assert!(a.errors.iter().any(|e| e.contains("overflows")), "{a:?}");
        }
    }
}
