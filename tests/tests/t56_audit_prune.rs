//! Retention (issue #24): an operator archives the start of the audit
//! chain (`grantctl audit export`), then prunes it (`grantctl audit
//! prune`). Every replica drops the same entries; what remains still
//! verifies offline from its start line, and fits the archive; reads below
//! the start say the entries were pruned; and a wiped node comes back
//! through a snapshot and fetches the chain from the start only
//! (docs/operations.md, "Retention").

use std::path::Path;

use futures_util::StreamExt;
use grant_client::Client;
use grant_proto::audit::export::Line;
use grant_tests::*;

/// Entries per segment of the audit store: a prune removes whole ones.
const SEGMENT: u64 = 16_384;

/// `n` audited checks of `token`, 64 at a time.
async fn checks(client: &Client, token: &str, n: u64) {
    futures_util::stream::iter(0..n)
        .map(|_| client.check(check_req(token)))
        .buffer_unordered(64)
        .for_each(|r| {
            r.unwrap();
            async {}
        })
        .await;
}

/// The audit store of the generation in force in `data_dir`.
fn audit_dir(data_dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "audit"))
        .unwrap_or_else(|| panic!("no audit store in {}", data_dir.display()))
}

/// Run grantctl with `args`; its exit status and output.
fn grantctl(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = c.grantctl().args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `grantctl audit verify FILE --trusted-keys KEYS`; its status and output.
fn verify(c: &Cluster, file: &Path, keys: &Path) -> (bool, String) {
    grantctl(
        c,
        &[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--trusted-keys",
            keys.to_str().unwrap(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_chain_is_the_same_on_every_replica_verifies_from_its_start_and_fits_its_archive()
{
    let mut c = Cluster::start_with(
        3,
        &[
            "--checkpoint-interval-ms",
            "100",
            "--snapshot-logs-since-last",
            "500",
            "--logs-kept-after-snapshot",
            "10",
        ],
    )
    .await;
    let client = c.client();
    let r = client
        .issue_in(issue_req("prune-task", 3600))
        .await
        .unwrap();
    checks(&client, &r.token, SEGMENT + 1000).await;

    // The archive first: a whole export, which verifies.
    let dir = c.dir.path().to_path_buf();
    let keys = dir.join("trusted-keys");
    std::fs::write(&keys, client.roster().await.unwrap().keys.join("\n")).unwrap();
    let archive = dir.join("archive.jsonl");
    let (ok, out) = grantctl(&c, &["audit", "export", "--out", archive.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = verify(&c, &archive, &keys);
    assert!(ok, "{out}");

    // Bad requests change nothing: less than a segment, or more than a
    // signed checkpoint covers.
    let (ok, out) = grantctl(&c, &["audit", "prune", "--before", "1000"]);
    assert!(!ok && out.contains("before must be at least"), "{out}");
    let (ok, out) = grantctl(
        &c,
        &["audit", "prune", "--before", &(50 * SEGMENT).to_string()],
    );
    assert!(!ok && out.contains("no signed checkpoint covers"), "{out}");

    // The prune: to the segment boundary below `before`.
    let (ok, out) = grantctl(
        &c,
        &[
            "audit",
            "prune",
            "--before",
            &(SEGMENT + 17).to_string(),
            "--reason",
            "archived",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains(&format!("starts at entry {SEGMENT}")), "{out}");
    let (ok, out) = grantctl(&c, &["audit", "prune", "--before", &SEGMENT.to_string()]);
    assert!(
        !ok && out.contains("already starts at entry 16384"),
        "{out}"
    );

    // On every replica: the start, and the first segment gone from disk.
    let nodes: Vec<(u64, String, std::path::PathBuf)> = c
        .nodes
        .iter()
        .map(|n| (n.id, n.metrics_addr.clone(), n.data_dir.clone()))
        .collect();
    for (id, metrics, data_dir) in &nodes {
        wait_for(&format!("node {id} to prune"), || async {
            let m = http_get(metrics, "/metrics").await.unwrap_or_default();
            sample(&m, "grantd_audit_chain_start") == Some(SEGMENT as f64)
        })
        .await;
        let seg = audit_dir(data_dir).join("entries/00000000000000000000.seg");
        assert!(!seg.exists(), "{} is still there", seg.display());
    }
    // A read below the start says what happened.
    let e = client.audit_entries(5, 10).await.unwrap_err();
    assert_eq!(e.code(), Some("pruned"), "{e}");
    assert!(e.to_string().contains("were pruned"), "{e}");
    let grant_client::ClientError::Status(s) = &e else {
        panic!("{e}")
    };
    assert_eq!(
        s.metadata()
            .get(grant_proto::CHAIN_START_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(SEGMENT.to_string().as_str()),
        "where to read from instead"
    );
    // So does a Watch from a log index whose events were pruned, at once
    // (every node would say the same).
    let mut w = grant_client::watch::Watcher::new(
        std::sync::Arc::new(c.client()),
        grant_client::watch::Start::LogIndex(1),
    );
    let e = tokio::time::timeout(WAIT_MAX, w.next())
        .await
        .expect("a watch from before the start answers at once")
        .unwrap_err();
    assert_eq!(e.code(), Some("pruned"), "{e}");

    // What remains is the same on every replica and verifies from its
    // start line (chains_agree also checks the schema).
    c.chains_agree("after the prune").await;
    let rest = String::from_utf8(client.audit_export(None).await.unwrap()).unwrap();
    let rest_file = dir.join("rest.jsonl");
    std::fs::write(&rest_file, &rest).unwrap();
    let (ok, out) = verify(&c, &rest_file, &keys);
    assert!(ok, "{out}");
    assert!(out.contains("pruned before seq 16384"), "{out}");

    // It fits the archive: the start names the archive's entry before it,
    // and carries the archive's roster entries before it.
    let archived = std::fs::read_to_string(&archive).unwrap();
    let lines: Vec<Line> = archived.lines().map(|l| Line::parse(l).unwrap()).collect();
    let Line::Start(start) = Line::parse(rest.lines().nth(1).unwrap()).unwrap() else {
        panic!("no start line: {}", rest.lines().nth(1).unwrap());
    };
    let hash_before = lines.iter().find_map(|l| match l {
        Line::Entry { entry, hash } if entry.seq == SEGMENT - 1 => Some(*hash),
        _ => None,
    });
    assert_eq!(Some(start.prev_hash), hash_before);
    let roster_before: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Entry { entry, .. }
                if entry.seq < SEGMENT && entry.kind == grant_proto::audit::Kind::KeyRoster =>
            {
                Some(entry.clone())
            }
            _ => None,
        })
        .collect();
    assert!(!roster_before.is_empty());
    assert_eq!(
        start
            .roster
            .iter()
            .map(|r| r.entry.clone())
            .collect::<Vec<_>>(),
        roster_before
    );
    // The prune is on the record, by the admin, with the reason.
    let prune = rest
        .lines()
        .filter_map(|l| match Line::parse(l) {
            Ok(Line::Entry { entry, .. }) if entry.kind == grant_proto::audit::Kind::Prune => {
                Some(entry)
            }
            _ => None,
        })
        .next()
        .expect("a prune entry");
    assert_eq!(prune.reason, "archived");
    assert!(prune.detail.contains("\"start\":16384"), "{}", prune.detail);

    // A wiped node comes back through a snapshot and fetches the chain from
    // the start only.
    let (leader, victim) = c.leader_and_follower().await;
    c.kill(victim);
    c.wipe(victim);
    let at_wipe = c.status(leader).await.unwrap().last_log_index;
    c.snapshot_past(&client, at_wipe, "after-wipe").await;
    let log = c.log_path(victim);
    c.spawn(victim);
    wait_log(
        &log,
        "the wiped node to fetch the chain from its start",
        |text| text.contains("fetched the audit chain below this node's snapshot"),
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("fetched the audit chain below"))
        .unwrap();
    let field = |name: &str| log_field(line, name);
    assert_eq!(field("fetched"), field("entries") - SEGMENT, "{line}");

    // Another replica restarted at once (faster than an election timeout)
    // finishes where it was: same state, same chain.
    let other = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != victim)
        .unwrap();
    c.kill(other);
    c.spawn(other);
    // It may have led: writes go on once a leader is known, through a new
    // client (the old one's connection to the killed process is dead).
    c.wait_leader().await;
    let client = c.client();
    checks(&client, &r.token, 200).await;
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");
    c.chains_agree("after a wipe and a restart").await;
    let e = client.audit_entries(0, 1).await.unwrap_err();
    assert_eq!(e.code(), Some("pruned"), "{e}");
}
