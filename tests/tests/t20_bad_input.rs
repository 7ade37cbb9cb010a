//! Bad input gets a clear gRPC error and changes nothing.

use grant_tests::grant_client::v1 as pb;
use grant_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let good = client.issue_in(issue_req("bad-input", 300)).await.unwrap();
    let before = c.converged_digests().await;

    let mut cases: Vec<(&str, pb::IssueRequest)> = Vec::new();
    let mut r = issue_req("bad-input", 300);
    r.subject = String::new();
    cases.push(("empty subject", r));
    let mut r = issue_req("bad-input", 300);
    r.subject = "agent-planner".into();
    cases.push(("malformed subject", r));
    let mut r = issue_req("bad-input", 300);
    r.subject = "spiffe://example.org".into();
    cases.push(("subject without path", r));
    let mut r = issue_req("bad-input", 300);
    r.ttl_seconds = 3601;
    cases.push(("ttl above max", r));
    let mut r = issue_req("bad-input", 300);
    r.intent = "x".repeat(4097);
    cases.push(("oversized intent", r));
    let mut r = issue_req("bad-input", 300);
    r.scopes = (0..17)
        .map(|i| pb::Scope {
            resource: format!("r{i}"),
            actions: vec!["read".into()],
        })
        .collect();
    cases.push(("too many scopes", r));
    let mut r = issue_req("bad-input", 300);
    r.scopes = vec![];
    cases.push(("no scopes", r));
    let mut r = issue_req("bad-input", 300);
    r.task_id = String::new();
    cases.push(("empty task", r));
    let mut r = issue_req("bad-input", 300);
    r.request_id = "has space".into();
    cases.push(("bad request id", r));
    let mut r = issue_req("bad-input", 300);
    r.intent = String::new();
    cases.push(("no intent", r));
    let mut r = issue_req("bad-input", 300);
    r.intent = "   ".into();
    cases.push(("a blank intent", r));
    for c in ['\u{202E}', '\u{200B}', '\u{2066}', '\u{FEFF}'] {
        let mut r = issue_req("bad-input", 300);
        r.intent = format!("triage {c}24 eussi");
        cases.push(("an intent with an invisible character", r));
    }
    let mut r = issue_req("bad-input", 300);
    r.task_id = "bad\u{202E}input".into();
    cases.push(("a task id with a bidi override", r));
    for (what, req) in cases {
        let err = client.issue(req).await.expect_err(what);
        assert_eq!(
            err.grpc_code(),
            Some(Code::InvalidArgument),
            "{what}: {err}"
        );
        assert_eq!(err.code(), Some("invalid_argument"), "{what}");
    }

    // ttl 0 means the default, so it is not an error; a check with garbage is.
    for token in [
        "",
        "garbage",
        "glt1_xyz_abc",
        &format!("glt1_{}_{}", "a".repeat(32), "z".repeat(64)),
    ] {
        let err = client.check(check_req(token)).await.expect_err(token);
        assert_eq!(
            err.grpc_code(),
            Some(Code::InvalidArgument),
            "token {token:?}"
        );
    }
    let mut bad_identity = check_req(&good.token);
    bad_identity.identity = "not-an-id".into();
    assert_eq!(
        client.check(bad_identity).await.unwrap_err().grpc_code(),
        Some(Code::InvalidArgument)
    );

    let unknown = "0123456789abcdef0123456789abcdef".to_string();
    let err = client.revoke(revoke_req(&unknown, "")).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::NotFound));
    let err = client
        .get(pb::GetRequest {
            grant_id: unknown,
            allow_stale: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::NotFound));
    let err = client
        .get(pb::GetRequest {
            grant_id: "nope".into(),
            allow_stale: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::InvalidArgument));
    let err = client
        .list(list_task_req("bad-input", 501))
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::InvalidArgument));
    let err = client
        .list(pb::ListRequest {
            by: None,
            page_size: 0,
            page_token: String::new(),
            allow_stale: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(Code::InvalidArgument));

    for intent in ["", "why\u{200B}not"] {
        let mut b = begin_req("bad-begin");
        b.intent = intent.into();
        let err = client
            .begin_task(b)
            .await
            .expect_err("begin without a visible intent");
        assert_eq!(err.code(), Some("invalid_argument"), "{intent:?}: {err}");
    }

    // Nothing changed: a refused request never reaches the log. (The
    // revoke of an unknown grant is a committed no-op, which moves the
    // applied index but not the grants.)
    let all = client.list(list_task_req("bad-input", 0)).await.unwrap();
    assert_eq!(all.grants.len(), 1);
    assert_eq!(
        reason(&client.check(check_req(&good.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    let after = c.converged_digests().await;
    assert!(after.iter().all(|x| x.1 == after[0].1));
    assert!(before.iter().all(|x| x.1 == before[0].1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_intent_required_the_record_says_none_was_given() {
    let c = Cluster::start_with(1, &["--intent-required", "false"]).await;
    let client = c.client();
    let mut b = begin_req("no-intent");
    b.intent = String::new();
    let t = client.begin_task(b).await.unwrap();
    const NONE: &str = "(none given: intent_required is off)";
    assert_eq!(t.task.unwrap().intent, NONE);
    let mut r = issue_req("no-intent", 60);
    r.intent = String::new();
    let issued = client.issue(r).await.unwrap();
    assert_eq!(issued.grant.unwrap().intent, NONE);
    let seq = issued.receipt.unwrap().audit_seq;
    let e = client.audit_entries(seq, 1).await.unwrap();
    assert_eq!(e.entries[0].intent, NONE, "the audit entry says so");
    // Invisible characters stay refused.
    let mut r = issue_req("no-intent", 60);
    r.intent = "\u{202E}".into();
    let err = client.issue(r).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_argument"));
}

#[test]
fn grantd_refuses_bad_config_with_a_clear_error() {
    let out = std::process::Command::new(grantd_bin())
        .args(["--node-id", "0", "--data-dir", "/nonexistent-grantd-test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node_id"));
    let out = std::process::Command::new(grantd_bin())
        .args([
            "--node-id",
            "4",
            "--data-dir",
            "/d",
            "--ttl-seconds-max",
            "60",
            "--ttl-seconds-default",
            "30",
            "--insecure",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node_id = 4"), "{text}");
    assert!(text.contains("ttl_seconds_max = 60"), "{text}");
}

#[test]
fn the_example_config_in_deploy_is_valid_and_complete() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grantd.toml");
    let out = std::process::Command::new(grantd_bin())
        .args(["--config", path, "--print-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every effective setting appears in the example, so none goes undocumented.
    let example = std::fs::read_to_string(path).unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Table headers ([roles]) are not settings; their keys are.
        if line.starts_with('[') || line.is_empty() {
            continue;
        }
        let key = line.split(" = ").next().unwrap();
        assert!(
            example.lines().any(|l| l.starts_with(&format!("{key} ="))),
            "{key} missing from deploy/grantd.toml"
        );
    }
}
