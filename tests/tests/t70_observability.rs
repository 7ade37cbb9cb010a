//! What an SRE watches: Prometheus metrics on their own port, and JSON log
//! lines that carry each request's id.

use grant_tests::*;

async fn scrape(c: &Cluster, id: u64) -> String {
    http_get(&c.node(id).metrics_addr, "/metrics")
        .await
        .unwrap_or_else(|| panic!("node {id} serves no /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_requests_raft_and_the_ledger() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    let leader = c.wait_leader().await;
    let mut grants = Vec::new();
    for _ in 0..4 {
        grants.push(client.issue_in(issue_req("metrics", 600)).await.unwrap());
    }
    let g0 = grants[0].grant.clone().unwrap();
    client
        .revoke(revoke_req(&g0.grant_id, "done"))
        .await
        .unwrap();
    client.check(check_req(&grants[1].token)).await.unwrap();
    let mut bad = issue_req("metrics", 600);
    bad.subject = "not-a-spiffe-id".into();
    client.issue(bad).await.unwrap_err();

    // The leader counted what it served, per RPC and outcome.
    let m = scrape(&c, leader).await;
    let issued = sample(
        &m,
        r#"grantd_rpc_requests_total{rpc="grantledger.v1.Grants/Issue",outcome="Ok"}"#,
    );
    assert_eq!(issued, Some(4.0), "{m}");
    let refused = sample(
        &m,
        r#"grantd_rpc_requests_total{rpc="grantledger.v1.Grants/Issue",outcome="InvalidArgument"}"#,
    );
    assert_eq!(refused, Some(1.0), "{m}");
    let timed = sample(
        &m,
        r#"grantd_rpc_latency_seconds_count{rpc="grantledger.v1.Grants/Issue",outcome="Ok"}"#,
    );
    assert_eq!(timed, Some(4.0), "{m}");
    assert_eq!(sample(&m, "grantd_raft_is_leader"), Some(1.0));
    // Issue x4, revoke, one check: 4 grants issued, one revoked.
    let d = c.converged_digests().await;
    for id in [1, 2, 3] {
        let m = scrape(&c, id).await;
        assert_eq!(
            sample(&m, "grantd_grants_active"),
            Some(3.0),
            "node {id}: {m}"
        );
        // At least where the digests met (checkpoints may follow).
        assert!(
            sample(&m, "grantd_raft_applied_index").unwrap() >= d[0].2 as f64,
            "node {id}: {m}"
        );
        // Issue, issue, issue, issue, revoke, check, plus membership and roster entries.
        assert!(sample(&m, "grantd_audit_entries").unwrap() >= 6.0, "{m}");
        assert!(sample(&m, "grantd_raft_term").unwrap() >= 1.0);
        // Every node appended and synced its log, which holds them.
        assert!(sample(&m, "grantd_raft_log_syncs").unwrap() >= 1.0, "{m}");
        assert!(
            sample(&m, "grantd_raft_log_sync_seconds").unwrap() >= 0.0,
            "{m}"
        );
        assert!(
            sample(&m, "grantd_raft_log_sync_max_seconds").is_some(),
            "{m}"
        );
        assert!(
            sample(&m, "grantd_raft_log_disk_bytes").unwrap() > 0.0,
            "{m}"
        );
        // Six entries at least, each some canonical bytes, an offset and
        // a leaf hash.
        assert!(
            sample(&m, "grantd_audit_store_bytes").unwrap() >= 6.0 * 40.0,
            "{m}"
        );
        assert!(
            sample(&m, "grantd_raft_log_cache_bytes").unwrap() > 0.0,
            "{m}"
        );
    }
    let leaders: f64 = {
        let mut n = 0.0;
        for id in [1, 2, 3] {
            n += sample(&scrape(&c, id).await, "grantd_raft_is_leader").unwrap();
        }
        n
    };
    assert_eq!(leaders, 1.0);

    // A follower counts the leader change when the leader dies.
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let before = sample(
        &scrape(&c, follower).await,
        "grantd_raft_leader_changes_total",
    )
    .unwrap();
    c.kill(leader);
    c.wait_leader().await;
    let after = sample(
        &scrape(&c, follower).await,
        "grantd_raft_leader_changes_total",
    )
    .unwrap();
    assert!(after > before, "{before} -> {after}");
    // The sweep and the answer agree on what is active after a restart too.
    c.spawn(leader);
    c.converged_digests().await;
    wait_for("the restarted node to count its grants", || async {
        http_get(&c.node(leader).metrics_addr, "/metrics")
            .await
            .and_then(|m| sample(&m, "grantd_grants_active"))
            == Some(3.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id() {
    let c = Cluster::start_with(
        3,
        &[
            "--log-format",
            "json",
            "--log",
            "info,grantd::metrics=debug",
        ],
    )
    .await;
    let client = c.client();
    let mut req = issue_req("json-logs", 600);
    req.request_id = "req-json-logs-7".into();
    client.issue_in(req).await.unwrap();
    let leader = c.wait_leader().await;
    let log = std::fs::read_to_string(c.dir.path().join(format!("node{leader}.log"))).unwrap();
    let mut found = false;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        // Every line of the request carries its span; the last one says
        // how it ended.
        if v["span"]["request_id"] == "req-json-logs-7" {
            assert_eq!(v["span"]["rpc"], "grantledger.v1.Grants/Issue", "{line}");
            assert_eq!(
                v["span"]["caller"], "spiffe://example.org/ops/admin",
                "{line}"
            );
            if v["fields"]["message"] == "request done" {
                assert_eq!(v["fields"]["outcome"], "Ok", "{line}");
                found = true;
            }
        }
    }
    assert!(found, "no log line names the request id:\n{log}");
}
