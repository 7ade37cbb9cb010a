//! A witness (grantctl audit witness) on real clusters: it co-signs the
//! log's checkpoints as the log grows, keeps what it accepted across runs,
//! and refuses a log that shows it another history, even one signed by the
//! log's own keys.

use std::path::Path;
use std::process::{Command, Output};

use grant_tests::*;

fn grantctl(c: &Cluster) -> Command {
    let mut cmd = Command::new(grantd_bin().with_file_name("grantctl"));
    c.grantctl_identity(&mut cmd);
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.api_addr.clone()).collect();
    cmd.arg("--endpoints").arg(endpoints.join(","));
    cmd
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One witness run against `c`.
fn witness(c: &Cluster, dir: &Path, keys: &Path) -> Output {
    grantctl(c)
        .args(["audit", "witness", "--name", "witness.example.org/w1"])
        .arg("--witness-key")
        .arg(dir.join("w.key"))
        .arg("--state")
        .arg(dir.join("w.state"))
        .arg("--trusted-keys")
        .arg(keys)
        .arg("--out")
        .arg(dir.join("cosigned.note"))
        .output()
        .unwrap()
}

async fn traffic(c: &Cluster, tag: &str) {
    let client = c.client();
    client.begin_task(begin_req(tag)).await.unwrap();
    for _ in 0..3 {
        client.issue(issue_req(tag, 600)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosigns_a_growing_log_and_refuses_a_fork() {
    let a = Cluster::start_with(3, &["--checkpoint-interval-ms", "100"]).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("log.keys");
    std::fs::write(&keys, a.client().roster().await.unwrap().keys.join("\n")).unwrap();
    let made = Command::new(grantd_bin().with_file_name("grantctl"))
        .args([
            "audit",
            "witness-key",
            "--name",
            "witness.example.org/w1",
            "--out",
        ])
        .arg(dir.path().join("w.key"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", said(&made));
    let witness_keys = dir.path().join("witness.keys");
    std::fs::write(&witness_keys, &made.stdout).unwrap();

    // First look, then twice as the log grows: co-signed each time, and the
    // cosigned checkpoint verifies with the log's and the witness's keys.
    let mut sizes = Vec::new();
    for round in 0..3 {
        traffic(&a, &format!("w{round}")).await;
        a.wait_signed().await;
        let o = witness(&a, dir.path(), &keys);
        assert!(o.status.success(), "round {round}: {}", said(&o));
        let v = Command::new(grantd_bin().with_file_name("grantctl"))
            .args(["audit", "verify-cosigned"])
            .arg(dir.path().join("cosigned.note"))
            .arg("--trusted-keys")
            .arg(&keys)
            .arg("--witness-keys")
            .arg(&witness_keys)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", said(&v));
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("w.state")).unwrap())
                .unwrap();
        let note = state["checkpoint"].as_str().unwrap();
        sizes.push(note.lines().nth(1).unwrap().parse::<u64>().unwrap());
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    // A cosigned checkpoint pins an export, as any checkpoint does.
    let export = dir.path().join("a.jsonl");
    let o = grantctl(&a)
        .args(["audit", "export", "--out"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let o = Command::new(grantd_bin().with_file_name("grantctl"))
        .args(["audit", "verify"])
        .arg(&export)
        .arg("--trusted-keys")
        .arg(&keys)
        .arg("--since")
        .arg(dir.path().join("cosigned.note"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));

    // Another cluster whose node signs with the same key, under the same
    // origin: its history is not the one the witness saw.
    let mut b = Cluster::prepare(1);
    std::fs::create_dir_all(&b.node(1).data_dir).unwrap();
    std::fs::copy(
        a.node(1).data_dir.join("node.key"),
        b.node(1).data_dir.join("node.key"),
    )
    .unwrap();
    b.spawn(1);
    let members = vec![b.node(1).member()];
    wait_for("node B1 to answer", || async {
        b.client().status_of(&b.node(1).api_addr).await.is_ok()
    })
    .await;
    b.client()
        .initialize(&b.node(1).api_addr, members)
        .await
        .unwrap();
    b.wait_leader().await;
    for round in 0..4 {
        traffic(&b, &format!("fork{round}")).await;
    }
    b.wait_signed().await;
    let before = std::fs::read_to_string(dir.path().join("w.state")).unwrap();
    let o = witness(&b, dir.path(), &keys);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    let text = said(&o);
    assert!(text.contains("not co-signed"), "{text}");
    assert!(
        ["forked", "rollback", "cannot prove"]
            .iter()
            .any(|w| text.contains(w)),
        "{text}"
    );
    // Nothing moved: the witness still holds the log to what it saw.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("w.state")).unwrap(),
        before
    );
    // And the real log, grown meanwhile, is still co-signed.
    traffic(&a, "after").await;
    a.wait_signed().await;
    let o = witness(&a, dir.path(), &keys);
    assert!(o.status.success(), "{}", said(&o));
}
