//! The signed audit chain on a real cluster: exports verify offline, every
//! kind of tampering is caught at the right position, proofs verify, and
//! replicas hold the same chain through node loss.

use std::process::Command;

use ed25519_dalek::SigningKey;
use grant_tests::grant_client::v1 as pb;
use grant_tests::grant_proto::audit::export::{self, parse_trusted_keys, Line, Position};
use grant_tests::grant_proto::audit::merkle::{self, Frontier};
use grant_tests::grant_proto::audit::note::{self, Checkpoint, VerifierKey};
use grant_tests::*;

/// Some traffic: issues, checks (allow and deny), revokes, a task completion.
async fn traffic(c: &Cluster, tag: &str, n: usize) {
    let client = c.client();
    for i in 0..n {
        let r = client
            .issue_in(issue_req(&format!("{tag}-{}", i % 3), 600))
            .await
            .unwrap();
        client.check(check_req(&r.token)).await.unwrap();
        if i % 2 == 0 {
            let id = r.grant.unwrap().grant_id;
            client.revoke(revoke_req(&id, "done")).await.unwrap();
            client.check(check_req(&r.token)).await.unwrap();
        }
    }
    client
        .complete_task(pb::CompleteTaskRequest {
            request_id: String::new(),
            task_id: format!("{tag}-0"),
            reason: String::new(),
        })
        .await
        .unwrap();
}

/// Wait until a signed checkpoint covers every entry, and return the export.
async fn settled_export(c: &Cluster, node: Option<u64>) -> String {
    let client = c.client();
    c.wait_signed().await;
    let addr = node.map(|id| c.node(id).api_addr.clone());
    String::from_utf8(client.audit_export(addr.as_deref()).await.unwrap()).unwrap()
}

async fn trusted(c: &Cluster) -> Vec<VerifierKey> {
    let keys = c.client().roster().await.unwrap().keys.join("\n");
    parse_trusted_keys(&keys).unwrap()
}

/// A trusted-keys file as an auditor keeps it: one verifier key per line.
fn write_trusted_keys(path: &std::path::Path, keys: &[VerifierKey]) {
    let text = keys
        .iter()
        .map(|k| k.encode())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(path, text).unwrap();
}

fn node_key(c: &Cluster, id: u64) -> SigningKey {
    let raw: [u8; 32] = std::fs::read(c.node(id).data_dir.join("node.key"))
        .unwrap()
        .try_into()
        .unwrap();
    SigningKey::from_bytes(&raw)
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn join(l: &[String]) -> String {
    l.join("\n") + "\n"
}

/// The export cut back to its oldest checkpoint, with the header fixed: a
/// consistent export of a shorter log, as a rollback would show it.
fn rolled_back(text: &str) -> (String, u64) {
    let l = lines(text);
    let mut notes: Vec<(u64, String)> = l
        .iter()
        .filter_map(|x| match Line::parse(x) {
            Ok(Line::Checkpoint { note: n }) => {
                Some((note::parse(&n).unwrap().checkpoint.size, x.clone()))
            }
            _ => None,
        })
        .collect();
    notes.sort();
    let size = notes[0].0;
    let mut out = vec![String::new()];
    out.extend((0..size).map(|seq| l[entry_line(&l, seq)].clone()));
    out.extend(
        notes
            .iter()
            .filter(|(s, _)| *s == size)
            .map(|(_, x)| x.clone()),
    );
    let origin = match Line::parse(&l[0]).unwrap() {
        Line::Header { origin, .. } => origin,
        _ => unreachable!(),
    };
    let cps = out.len() as u64 - 1 - size;
    out[0] = Line::header(&origin, size, cps).to_json();
    (join(&out), size)
}

/// Index in `l` of the line holding entry `seq`.
fn entry_line(l: &[String], seq: u64) -> usize {
    l.iter()
        .position(|x| {
            x.starts_with("{\"type\":\"entry\"")
                && x.contains(&format!("\"entry\":{{\"seq\":{seq},"))
        })
        .unwrap()
}

fn first_error(text: &str, keys: &[VerifierKey]) -> export::VerifyError {
    export::verify(text, keys).expect_err("tampered export verified")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verifies_offline_and_every_tampering_is_caught() {
    let c = Cluster::start_with(3, &["--checkpoint-interval-ms", "100"]).await;
    traffic(&c, "audit", 12).await;
    let text = settled_export(&c, None).await;
    let keys = trusted(&c).await;
    let summary = export::verify(&text, &keys).unwrap();
    assert!(summary.entries > 30, "{summary:?}");
    assert_eq!(summary.covered, summary.entries);

    // The command line agrees, and exits non-zero on a bad export.
    let dir = tempfile::tempdir().unwrap();
    let (good, bad, keyfile) = (
        dir.path().join("good.jsonl"),
        dir.path().join("bad.jsonl"),
        dir.path().join("keys"),
    );
    std::fs::write(&good, &text).unwrap();
    write_trusted_keys(&keyfile, &keys);
    let grantctl = grantd_bin().with_file_name("grantctl");
    let verify_with = |f: &std::path::Path, more: &[&std::ffi::OsStr]| {
        Command::new(&grantctl)
            // Connection settings meant for other commands: an offline
            // verify ignores them (an empty one counts as unset).
            .env("GRANTCTL_CA", "/nonexistent/ca.pem")
            .env("GRANTCTL_CERT", "")
            .args(["audit", "verify"])
            .arg(f)
            .arg("--trusted-keys")
            .arg(&keyfile)
            .args(more)
            .output()
            .unwrap()
    };
    let run = |f: &std::path::Path| verify_with(f, &[]);
    let pin = dir.path().join("seen.checkpoint");
    let out = verify_with(&good, &["--save-checkpoint".as_ref(), pin.as_os_str()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("uncovered: 0 entries"));

    // Rolled back to an older checkpoint with the header fixed: consistent
    // on its own, refused once the auditor pins what they saw.
    let (back, size) = rolled_back(&text);
    assert!(size < summary.entries);
    export::verify(&back, &keys).expect("a shorter consistent log verifies on its own");
    std::fs::write(&bad, &back).unwrap();
    let out = verify_with(&bad, &["--since".as_ref(), pin.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("pinned checkpoint"), "{said}");
    let out = verify_with(&good, &["--since".as_ref(), pin.as_os_str()]);
    assert!(out.status.success());

    let l = lines(&text);
    // An entry of the traffic that carries its intent (refusals, written
    // as they are handed on, may sit anywhere among them).
    let k = (7..summary.entries - 3)
        .find(|&seq| l[entry_line(&l, seq)].contains("triage issue 42"))
        .expect("an entry with the traffic's intent");
    let at = entry_line(&l, k);

    // One byte changed inside an entry.
    let mut t = l.clone();
    t[at] = t[at].replacen("triage issue 42", "triage issue 43", 1);
    assert_ne!(t[at], l[at]);
    let e = first_error(&join(&t), &keys);
    assert_eq!(e.at, Position::Seq(k), "{e}");
    std::fs::write(&bad, join(&t)).unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("seq {k}")));

    // An entry dropped.
    let mut t = l.clone();
    t.remove(at);
    assert_eq!(first_error(&join(&t), &keys).at, Position::Seq(k));

    // Two entries swapped.
    let mut t = l.clone();
    t.swap(at, at + 1);
    assert_eq!(first_error(&join(&t), &keys).at, Position::Seq(k));

    // An entry inserted (a copy of the one before it).
    let mut t = l.clone();
    t.insert(at + 1, l[at].clone());
    assert_eq!(first_error(&join(&t), &keys).at, Position::Seq(k + 1));

    // The tail truncated after a checkpoint: the checkpoint still claims it.
    let mut t = l.clone();
    let last = entry_line(&l, summary.entries - 1);
    t.drain(last - 2..=last);
    let e = first_error(&join(&t), &keys);
    // The first checkpoint that reaches past the cut names it.
    assert!(
        matches!(e.at, Position::Checkpoint(s) if s > summary.entries - 3),
        "{e}"
    );
    assert!(e.problem.contains("truncated"), "{e}");

    // Checkpoints signed by a key outside the trusted set.
    let stranger = VerifierKey::new(
        "grant-ledger-node-1",
        SigningKey::from_bytes(&[9; 32]).verifying_key(),
    );
    let e = first_error(&text, &[stranger]);
    assert!(matches!(e.at, Position::Checkpoint(_)), "{e}");
    assert!(e.problem.contains("trusted"), "{e}");

    // A whole forged chain, consistent in itself, re-signed with an unknown key.
    let forger = SigningKey::from_bytes(&[42; 32]);
    let mut prev = [0u8; 32];
    let mut f = Frontier::default();
    let mut forged = vec![l[0].clone()];
    for line in l.iter().filter(|x| x.starts_with("{\"type\":\"entry\"")) {
        let Line::Entry { mut entry, .. } = Line::parse(line).unwrap() else {
            unreachable!()
        };
        if entry.seq == k {
            entry.decision = grant_tests::grant_proto::audit::Decision::Allow;
        }
        entry.prev_hash = prev;
        prev = entry.hash();
        f.push(entry.leaf_hash());
        forged.push(Line::entry(entry).to_json());
    }
    let cp = Checkpoint {
        origin: summary.origin.clone(),
        size: f.size,
        root: f.root(),
        time_ms: 1,
    };
    forged.push(
        Line::Checkpoint {
            note: note::sign(&cp, "grant-ledger-node-1", &forger),
        }
        .to_json(),
    );
    let e = first_error(&join(&forged), &keys);
    assert!(matches!(e.at, Position::Checkpoint(_)), "{e}");

    // A fork: a second checkpoint of the same size, with another root,
    // signed by a trusted node key (a compromised or buggy leader).
    let leader = c.wait_leader().await;
    let (cp_size, _) = {
        let r = c.client().latest_checkpoint().await.unwrap();
        (r.tree_size, r.root_hash)
    };
    let name = format!("grant-ledger-node-{leader}");
    let fork = Checkpoint {
        origin: summary.origin.clone(),
        size: cp_size,
        root: [0xee; 32],
        time_ms: 2,
    };
    let mut t = l.clone();
    t.push(
        Line::Checkpoint {
            note: note::sign(&fork, &name, &node_key(&c, leader)),
        }
        .to_json(),
    );
    let e = first_error(&join(&t), &keys);
    assert_eq!(e.at, Position::Checkpoint(cp_size), "{e}");
    assert!(e.problem.contains("fork"), "{e}");
    assert_eq!(e.evidence.len(), 2, "both checkpoints are the evidence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_verify_against_signed_checkpoints() {
    let c = Cluster::start_with(3, &["--checkpoint-interval-ms", "100"]).await;
    let client = c.client();
    let issued = client.issue_in(issue_req("prove", 600)).await.unwrap();
    let first_cp = {
        settled_export(&c, None).await;
        client.latest_checkpoint().await.unwrap()
    };
    // Checks arriving together share entries, so the tree spans several
    // stored chunks of leaf hashes, some filled across an entry's boundary.
    let token = issued.token.clone();
    let checks = (0..150).map(|_| client.check(check_req(&token)));
    for r in futures_util::future::join_all(checks).await {
        r.unwrap();
    }
    let revoked = client
        .revoke(revoke_req(&issued.grant.unwrap().grant_id, "done"))
        .await
        .unwrap();
    let receipt = revoked.receipt.unwrap();
    settled_export(&c, None).await;
    let keys = trusted(&c).await;

    // The revocation is on the record: its receipt's entry is in a signed tree.
    let p = client.inclusion_proof(receipt.audit_seq, 0).await.unwrap();
    let entry = grant_client::entry_from_pb(p.entry.as_ref().unwrap()).unwrap();
    assert_eq!(entry.hash().to_vec(), receipt.entry_hash);
    assert_eq!(entry.kind, grant_tests::grant_proto::audit::Kind::Revoke);
    let (cp, _) = note::verify(&p.checkpoint_note, &keys).unwrap();
    let proof: Vec<[u8; 32]> = p
        .proof
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    assert!(merkle::verify_inclusion(
        receipt.audit_seq,
        cp.size,
        &entry.leaf_hash(),
        &proof,
        &cp.root
    ));
    assert!(!merkle::verify_inclusion(
        receipt.audit_seq,
        cp.size,
        &[0; 32],
        &proof,
        &cp.root
    ));

    // The older checkpoint is a prefix of the newer one.
    let cons = client
        .consistency_proof(first_cp.tree_size, cp.size)
        .await
        .unwrap();
    let proof: Vec<[u8; 32]> = cons
        .proof
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    let old_root: [u8; 32] = first_cp.root_hash.as_slice().try_into().unwrap();
    assert!(merkle::verify_consistency(
        first_cp.tree_size,
        cp.size,
        &old_root,
        &cp.root,
        &proof
    ));

    // grantctl audit prove does the same from the command line.
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("keys");
    write_trusted_keys(&keyfile, &keys);
    let endpoints = c
        .nodes
        .iter()
        .map(|n| n.api_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let proof_file = dir.path().join("revoke.proof.json");
    let mut cmd = Command::new(grantd_bin().with_file_name("grantctl"));
    c.grantctl_identity(&mut cmd);
    let out = cmd
        .args([
            "--endpoints",
            &endpoints,
            "audit",
            "prove",
            &receipt.audit_seq.to_string(),
            "--trusted-keys",
        ])
        .arg(&keyfile)
        .arg("--out")
        .arg(&proof_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The path is printed, not only the entry and the checkpoint.
    assert!(said.contains("path 0: "), "{said}");

    // A third party, with the file and the keys only.
    let verify_proof = |f: &std::path::Path| {
        Command::new(grantd_bin().with_file_name("grantctl"))
            .args(["audit", "verify-proof"])
            .arg(f)
            .arg("--trusted-keys")
            .arg(&keyfile)
            .output()
            .unwrap()
    };
    let out = verify_proof(&proof_file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&proof_file).unwrap();
    let forged = dir.path().join("forged.proof.json");
    // The revoke turned into something else, or the path bent.
    for (from, to) in [
        (r#""kind":"revoke""#, r#""kind":"check""#),
        (r#""path":[""#, r#""path":["0"#),
    ] {
        assert!(text.contains(from), "{text}");
        std::fs::write(&forged, text.replacen(from, to, 1)).unwrap();
        let out = verify_proof(&forged);
        assert_eq!(out.status.code(), Some(1), "{from} -> {to} verified");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_the_same_chain_through_kill_and_wipe() {
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
    traffic(&c, "a", 10).await;
    let (_, killed) = c.leader_and_follower().await;
    c.kill(killed);
    traffic(&c, "b", 10).await;
    c.spawn(killed);
    c.converged_digests().await;
    let leader = c.wait_leader().await;
    let wiped = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader && id != killed)
        .unwrap_or(killed);
    c.kill(wiped);
    c.wipe(wiped);
    // Keep writing until the leader's log behind the wipe is purged behind
    // a snapshot, so the wiped node can only come back through one.
    let at_wipe = c.status(leader).await.unwrap().last_log_index;
    for round in 0..20 {
        traffic(&c, &format!("c{round}"), 10).await;
        let leader = c.wait_leader().await;
        if c.status(leader)
            .await
            .map(|s| s.snapshot_index > at_wipe)
            .unwrap_or(false)
        {
            break;
        }
        assert!(round < 19, "no snapshot past index {at_wipe}");
    }
    c.spawn(wiped);
    let d = c.converged_digests().await;
    assert!(d.iter().all(|x| x.1 == d[0].1), "{d:?}");

    // Once a checkpoint covers the whole log, every node's chain is the
    // same and verifies.
    settled_export(&c, None).await;
    let common = c.chains_agree("after a kill and a wipe").await;
    assert!(common > 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_new_checkpoints_and_old_ones_still_verify() {
    let c = Cluster::start_with(3, &["--checkpoint-interval-ms", "100"]).await;
    traffic(&c, "rot", 3).await;
    settled_export(&c, None).await;
    let old_keys = trusted(&c).await;
    let leader = c.wait_leader().await;
    let rotated = c
        .client()
        .rotate_key(&c.node(leader).api_addr)
        .await
        .unwrap();
    assert_ne!(rotated.verifier_key, rotated.retired_verifier_key);
    assert!(old_keys
        .iter()
        .any(|k| k.encode() == rotated.retired_verifier_key));
    // The new key reaches the roster and signs the next checkpoint.
    wait_for("the new key in the roster", || async {
        c.client()
            .roster()
            .await
            .map(|r| r.keys.contains(&rotated.verifier_key))
            .unwrap_or(false)
    })
    .await;
    traffic(&c, "rot2", 2).await;
    let text = settled_export(&c, None).await;
    let all = trusted(&c).await;
    assert_eq!(all.len(), old_keys.len() + 1);
    let s = export::verify(&text, &all).unwrap();
    assert!(s.signers.contains(&format!("grant-ledger-node-{leader}")));
    // An auditor who never learned of the new key cannot accept the new checkpoints.
    let e = first_error(&text, &old_keys);
    assert!(matches!(e.at, Position::Checkpoint(_)), "{e}");
    let rotations = lines(&text)
        .iter()
        .filter(|l| l.contains("\"kind\":\"key_roster\"") && l.contains("\"reason\":\"rotate\""))
        .count();
    assert_eq!(rotations, 1);
}
