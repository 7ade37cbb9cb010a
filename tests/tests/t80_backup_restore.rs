//! Backup and disaster recovery, as an SRE runs them: `grantctl snapshot
//! save` against a live cluster, `grantd restore` into new data
//! directories, a new cluster started from them. Every write acknowledged
//! before the backup is there, the audit chain verifies and continues.

use grant_tests::grant_client::v1 as pb;
use grant_tests::grant_proto::audit::export::{self, parse_trusted_keys};
use grant_tests::*;
use std::process::Command;

/// The command's standard output, after asserting it succeeded.
fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `grantd restore` for node `id` of the new cluster `r`, every member named.
fn restore(r: &Cluster, id: u64, backup: &std::path::Path) -> std::process::Output {
    let n = r.node(id);
    let mut cmd = Command::new(grantd_bin());
    cmd.args(["--node-id", &id.to_string()])
        .arg("--data-dir")
        .arg(&n.data_dir)
        .args(["--api-addr", &n.api_addr, "--raft-addr", &n.raft_addr])
        .args(["--metrics-addr", &n.metrics_addr])
        .arg("restore")
        .arg("--backup")
        .arg(backup);
    for m in &r.nodes {
        cmd.args([
            "--member",
            &format!("{}={},{}", m.id, m.raft_addr, m.api_addr),
        ]);
    }
    cmd.output().unwrap()
}

fn entry_lines(export: &str, below: u64) -> Vec<String> {
    export
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"entry\""))
        .take(below as usize)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_into_a_new_cluster_whose_chain_verifies_and_continues() {
    let old = Cluster::start(3).await;
    let client = old.client();
    let mut kept = Vec::new();
    for _ in 0..5 {
        kept.push(client.issue_in(issue_req("backup", 3600)).await.unwrap());
    }
    let revoked = client.issue_in(issue_req("backup", 3600)).await.unwrap();
    client
        .revoke(revoke_req(
            &revoked.grant.as_ref().unwrap().grant_id,
            "done",
        ))
        .await
        .unwrap();
    client.check(check_req(&kept[0].token)).await.unwrap();

    // Backups live apart from the cluster they came from.
    let vault = tempfile::tempdir().unwrap();
    let file = vault.path().join("cluster.backup");
    let saved = succeeded(
        old.grantctl()
            .args(["snapshot", "save"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    assert!(saved.contains("saved"), "{saved}");
    succeeded(
        old.grantctl()
            .args(["snapshot", "status"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    let bytes = std::fs::read(&file).unwrap();
    let (header, _) = grant_client::backup::parse(&bytes).unwrap();

    // Written after the backup: not in it.
    let later = client.issue_in(issue_req("backup", 3600)).await.unwrap();
    let old_export = String::from_utf8(client.audit_export(None).await.unwrap()).unwrap();
    let mut trusted = client.roster().await.unwrap().keys;
    drop(old);

    // A damaged backup is refused and leaves no data directory behind.
    let r = Cluster::prepare(3);
    let damaged = r.dir.path().join("damaged.backup");
    let mut b = bytes.clone();
    *b.last_mut().unwrap() ^= 0x40;
    std::fs::write(&damaged, &b).unwrap();
    let out = restore(&r, 1, &damaged);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHA-256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!r.node(1).data_dir.exists());

    // Restore every member of the new cluster from the same file.
    let mut r = r;
    for id in 1..=3 {
        succeeded(restore(&r, id, &file));
    }
    // A second restore into a seeded directory is refused.
    let out = restore(&r, 1, &file);
    assert!(!out.status.success());
    for id in 1..=3 {
        r.spawn(id);
    }
    // Asked of the leader: a member that is still starting (slow on a
    // loaded machine) refuses connections for a moment.
    let leader = r.wait_leader().await;
    let client = r.client();
    let s = client.status_of(&r.node(leader).api_addr).await.unwrap();
    let addrs: Vec<String> = s.voters.iter().map(|n| n.api_addr.clone()).collect();
    let want: Vec<String> = r.nodes.iter().map(|n| n.api_addr.clone()).collect();
    assert_eq!(addrs, want, "the new cluster runs on its own members");

    for g in &kept {
        assert_eq!(
            reason(&client.check(check_req(&g.token)).await.unwrap()),
            pb::Reason::Allowed
        );
    }
    assert_eq!(
        reason(&client.check(check_req(&revoked.token)).await.unwrap()),
        pb::Reason::Revoked
    );
    assert_eq!(
        reason(&client.check(check_req(&later.token)).await.unwrap()),
        pb::Reason::UnknownGrant
    );
    let fresh = client
        .issue_in(issue_req("after-restore", 600))
        .await
        .unwrap();
    assert_eq!(
        reason(&client.check(check_req(&fresh.token)).await.unwrap()),
        pb::Reason::Allowed
    );

    // The chain continues: the backed-up entries are the prefix, new ones
    // follow, and the whole export verifies with the old and new node keys
    // once a checkpoint covers the new entries.
    let new_export = loop {
        let cp = client.latest_checkpoint().await.unwrap();
        let e = String::from_utf8(client.audit_export(None).await.unwrap()).unwrap();
        let n = e
            .lines()
            .filter(|l| l.starts_with("{\"type\":\"entry\""))
            .count() as u64;
        if cp.tree_size == n && n > header.audit_size + 2 {
            break e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        entry_lines(&new_export, header.audit_size),
        entry_lines(&old_export, header.audit_size)
    );
    trusted.extend(client.roster().await.unwrap().keys);
    let keys = parse_trusted_keys(&trusted.join("\n")).unwrap();
    let summary = export::verify(&new_export, &keys).unwrap();
    assert!(summary.entries > header.audit_size);
    assert_eq!(summary.covered, summary.entries);
}

/// Two of three nodes lost for good: no leader can confirm a consistent
/// backup, but the survivor's own state can seed a new cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_losing_a_majority_the_survivor_seeds_a_new_cluster() {
    let mut old = Cluster::start(3).await;
    let g = old
        .client()
        .issue_in(issue_req("majority", 3600))
        .await
        .unwrap();
    old.converged_digests().await;
    let leader = old.wait_leader().await;
    let survivor = (1..=3).find(|&i| i != leader).unwrap();
    for id in (1..=3).filter(|&i| i != survivor) {
        old.kill(id);
    }
    let scratch = tempfile::tempdir().unwrap();
    let err = old
        .node_client(survivor)
        .backup_to(None, &scratch.path().join("no-quorum.backup"))
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::Unavailable), "{err}");

    let vault = tempfile::tempdir().unwrap();
    let file = vault.path().join("survivor.backup");
    let addr = old.node(survivor).api_addr.clone();
    let mut cmd = Command::new(grantd_bin().with_file_name("grantctl"));
    old.grantctl_identity(&mut cmd);
    succeeded(
        cmd.args([
            "--endpoints",
            &addr,
            "snapshot",
            "save",
            "--stale-from",
            &addr,
        ])
        .arg(&file)
        .output()
        .unwrap(),
    );
    drop(old);

    let mut r = Cluster::prepare(3);
    for id in 1..=3 {
        succeeded(restore(&r, id, &file));
        r.spawn(id);
    }
    r.wait_leader().await;
    let client = r.client();
    assert_eq!(
        reason(&client.check(check_req(&g.token)).await.unwrap()),
        pb::Reason::Allowed
    );
    let d = r.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");
}
