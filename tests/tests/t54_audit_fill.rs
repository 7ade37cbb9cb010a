//! A node begun from a snapshot (issue #24): snapshots carry the state and
//! the audit chain's head, not the chain's entries. A wiped node serves as
//! soon as it has installed one; it says that it lacks the start of the
//! chain until it has fetched it from a peer, checked against the head's
//! root; a peer whose entries were altered is named and not believed; and
//! once fetched, every replica's chain is the same and verifies
//! (docs/storage.md, "Snapshots and the chain below them").

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use grant_client::watch::{Start, Update, Watcher};
use grant_client::Client;
use grant_proto::v1 as pb;
use grant_tests::*;

/// The first segment of a node's audit store (whichever generation).
fn first_segment(data_dir: &Path) -> PathBuf {
    let dir = std::fs::read_dir(data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "audit"))
        .unwrap_or_else(|| panic!("no audit store in {}", data_dir.display()));
    dir.join("entries/00000000000000000000.seg")
}

/// Change `from` to `to` (same length) at its first place in `file`: the
/// entry still decodes, with its seq, but it is not the one the chain holds.
/// Returns what to write back.
fn alter(file: &Path, from: &str, to: &str) -> (u64, Vec<u8>) {
    assert_eq!(from.len(), to.len());
    let data = std::fs::read(file).unwrap();
    let at = data
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in {}", file.display()));
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(to.as_bytes(), at as u64).unwrap();
    (at as u64, from.as_bytes().to_vec())
}

fn put_back(file: &Path, (at, bytes): &(u64, Vec<u8>)) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(bytes, *at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_serves_at_once_and_fetches_the_chain_only_from_an_honest_peer() {
    let mut c = Cluster::start_with(
        3,
        &[
            "--checkpoint-interval-ms",
            "100",
            "--snapshot-logs-since-last",
            "60",
            "--logs-kept-after-snapshot",
            "10",
        ],
    )
    .await;
    let client = c.client();
    let mut grants = Vec::new();
    for i in 0..40 {
        let r = client
            .issue_in(issue_req(&format!("fill-task-{i:02}"), 600))
            .await
            .unwrap();
        client.check(check_req(&r.token)).await.unwrap();
        grants.push(r.grant.unwrap().grant_id);
    }
    let (leader, victim) = c.leader_and_follower().await;
    c.kill(victim);
    c.wipe(victim);
    // Writes go on until the leader's log behind the wipe is purged behind
    // a snapshot (openraft purges 256 entries at a time): the wiped node
    // can only come back through one.
    let at_wipe = c.status(leader).await.unwrap().last_log_index;
    c.snapshot_past(&client, at_wipe, "after-wipe").await;
    for g in grants.iter().take(5) {
        client.revoke(revoke_req(g, "fill test")).await.unwrap();
    }

    // Every peer's copy of an early entry altered on disk.
    let peers: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != victim)
        .collect();
    let altered: Vec<(PathBuf, (u64, Vec<u8>))> = peers
        .iter()
        .map(|&id| {
            let seg = first_segment(&c.node(id).data_dir);
            let undo = alter(&seg, "fill-task-03", "fill-task-XX");
            (seg, undo)
        })
        .collect();

    c.spawn(victim);
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");
    let log = c.dir.path().join(format!("node{victim}.log"));
    wait_log(&log, "the wiped node to install a snapshot", |text| {
        text.contains("installing snapshot from leader")
    })
    .await;
    // Serving: its state is there, and calls through it succeed.
    let direct = c.node_client(victim);
    let g = direct
        .get(pb::GetRequest {
            grant_id: grants[0].clone(),
            allow_stale: true,
        })
        .await
        .unwrap()
        .grant
        .unwrap();
    assert_eq!(g.state, pb::GrantState::Revoked as i32);
    let fresh = direct
        .issue_in(issue_req("after-restart", 600))
        .await
        .unwrap();
    direct.check(check_req(&fresh.token)).await.unwrap();
    // A watch on it from now hears a revocation.
    let only_victim = Client::new(vec![c.node(victim).api_addr.clone()], c.options()).unwrap();
    let mut watcher = Watcher::new(Arc::new(only_victim), Start::Now);
    let first = tokio::time::timeout(WAIT_MAX, watcher.next()).await;
    assert!(matches!(first, Ok(Ok(_))), "{first:?}");
    client
        .revoke(revoke_req(&grants[10], "watched on the wiped node"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT_MAX;
    'heard: loop {
        assert!(std::time::Instant::now() < deadline, "no revocation heard");
        let next = tokio::time::timeout(WAIT_MAX, watcher.next())
            .await
            .expect("watch stalled")
            .unwrap();
        if let Update::Events(events) = next {
            if events.iter().any(|e| e.grant_id == grants[10]) {
                break 'heard;
            }
        }
    }

    // Every peer's entries are found out: the node names each, and says
    // that it lacks the start of the chain rather than serve a wrong one.
    wait_log(
        &log,
        "the wiped node to refuse both peers' altered entries",
        |text| text.matches("do not hash to the seam's root").count() >= 2,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for id in &peers {
        assert!(
            text.lines()
                .any(|l| l.contains("do not hash to the seam's root")
                    && (l.contains(&format!("from_node={id}"))
                        || l.contains(&format!("\"from_node\":{id}")))),
            "node {id} was never named:\n{text}"
        );
    }
    let e = client
        .audit_export(Some(&c.node(victim).api_addr))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("fetching the entries before it"),
        "{e}"
    );
    let metrics = http_get(&c.node(victim).metrics_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        sample(&metrics, "grantd_audit_missing_entries").unwrap() > 40.0,
        "{metrics}"
    );

    // The peers' files put right: the next fetch is believed, and every
    // replica holds the same chain, which verifies.
    for (seg, undo) in &altered {
        put_back(seg, undo);
    }
    wait_log(
        &log,
        "the wiped node to fetch the chain below its snapshot",
        |text| text.contains("fetched the audit chain below this node's snapshot"),
    )
    .await;
    let metrics = http_get(&c.node(victim).metrics_addr, "/metrics")
        .await
        .unwrap();
    assert_eq!(sample(&metrics, "grantd_audit_missing_entries"), Some(0.0));
    let common = c.chains_agree("after the fetch").await;
    assert!(common > 80, "{common}");

    // Stopped, not wiped, while the log moves on past a snapshot: it comes
    // back through a snapshot again, and the store it had seeds the fetch,
    // which then takes only what it missed.
    c.kill(victim);
    let at_stop = c
        .status(c.wait_leader().await)
        .await
        .unwrap()
        .last_log_index;
    c.snapshot_past(&client, at_stop, "after-stop").await;
    let before = std::fs::read_to_string(&log).unwrap();
    c.spawn(victim);
    wait_log(&log, "the stopped node to fetch again, seeded", |text| {
        let new = &text[before.len().min(text.len())..];
        new.contains("seeds the fetch") && new.contains("fetched the audit chain below")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text[before.len()..]
        .lines()
        .find(|l| l.contains("fetched the audit chain below"))
        .unwrap()
        .to_string();
    let field = |name: &str| log_field(&line, name);
    assert!(
        field("fetched") < field("entries") && field("fetched") > 0,
        "the seed did not shorten the fetch: {line}"
    );
    c.chains_agree("after a seeded fetch").await;
}
