//! A realistic policy set of a given size, for tests and benchmarks: one
//! permit per tool and action for the agents, forbids for production tools
//! without a ticket and for writes outside business hours, and the issuing
//! rules. The harness's own identity (ops/admin) may issue, and every
//! check of the harness's grants (github, read) is allowed.

/// `n` policies (at least the 4 fixed ones) against the built-in schema.
pub fn realistic(n: usize) -> String {
    let mut out = String::from(
        r#"@id("orchestrator-issues")
permit (principal, action == Action::"issue", resource)
when {
  (principal.path == "/orchestrator" || principal.path like "/ops/*") &&
  context.ttl_seconds <= 3600
};

@id("prod-issue-needs-ticket")
forbid (principal, action == Action::"issue", resource)
when { resource.name like "prod/*" } unless { context.intent like "*OPS-*" };

@id("prod-check-needs-ticket")
forbid (principal, action, resource)
when { resource.name like "prod/*" && context has request }
unless { context.request has ticket };

@id("github-read")
permit (principal, action == Action::"read", resource == Tool::"github")
when { principal.path like "/agent/*" };
"#,
    );
    let actions = ["read", "write", "delete", "execute"];
    for i in 0..n.saturating_sub(4) {
        let tool = format!("tool-{}", i / actions.len());
        let action = actions[i % actions.len()];
        if i % 5 == 4 {
            out.push_str(&format!(
                "@id(\"{tool}-{action}-hours\")\nforbid (principal, action == Action::\"{action}\", resource == Tool::\"{tool}\")\nunless {{ context.time.weekday_utc <= 5 && context.time.hour_utc >= 8 && context.time.hour_utc < 18 }};\n\n"
            ));
        } else {
            out.push_str(&format!(
                "@id(\"{tool}-{action}\")\npermit (principal, action == Action::\"{action}\", resource == Tool::\"{tool}\")\nwhen {{ principal.trust_domain == \"example.org\" && context.task like \"*\" }};\n\n"
            ));
        }
    }
    out
}
