//! Test harness: real `grantd` processes on loopback ports, real sled on
//! disk under a temporary directory, stopped by PID when the test ends.
//!
//! Binaries come from the workspace target directory (`cargo build --bins`
//! first; the test script does) or from `GRANTD_BIN`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grant_client::v1 as pb;
use grant_client::{Client, ClientError, Options};

pub use grant_client;
pub use grant_proto;

pub mod netns;
pub mod pki;
pub mod policies;
use netns::Net;
use pki::Pki;

/// Upper bound for any wait on observable state in a test.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

pub fn grantd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GRANTD_BIN") {
        return p.into();
    }
    // Beside a binary (target/<profile>/loadgen) or one level up from a
    // test binary (target/<profile>/deps/t10-...).
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("exe dir");
    let candidates = [
        here.join("grantd"),
        here.parent().map(|p| p.join("grantd")).unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "grantd not built next to {}: run `cargo build --bins` first",
                exe.display()
            )
        })
}

/// Ports for test nodes come from below Linux's ephemeral range
/// (32768-60999 by default): a port the kernel hands out for `bind(0)` or
/// for the source side of an outgoing connection could be taken by some
/// other socket between our probe and the node's own bind (or while a node
/// is down for a restart), and the node would fail to start. Each test
/// process starts at an offset derived from its PID and walks forward,
/// keeping only ports it can bind right now.
const PORT_FIRST: u16 = 20_000;
const PORT_LAST: u16 = 32_000;

fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORT_LAST - PORT_FIRST);
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_FIRST + ((offset + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_FIRST}..{PORT_LAST}");
}

pub struct NodeProc {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn member(&self) -> pb::Node {
        pb::Node {
            id: self.id,
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    /// Passed to every node; `--insecure` among them makes the cluster
    /// (and the harness's clients) plaintext.
    pub extra_args: Vec<String>,
    /// The cluster's CA and certificates (mTLS unless `--insecure`).
    pub pki: Pki,
    /// With one network namespace per node (`start_partitionable`), nodes
    /// can be cut off from each other.
    pub net: Option<Net>,
}

impl Cluster {
    /// Start `n` nodes, initialise them as voters, wait for a leader.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, &[]).await
    }

    pub async fn start_with(n: u64, extra: &[&str]) -> Cluster {
        Self::start_configured(n, extra, &[]).await
    }

    /// Like `start_with`, with `toml` added to every node's config file
    /// (tables such as `[jwt_auth]` that have no flag) and `files` (name,
    /// content) written beside it first.
    pub async fn start_configured(n: u64, extra: &[&str], files: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            nodes: Vec::new(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            pki: Pki::new(&dir.path().join("pki")),
            net: None,
            dir,
        };
        c.start_nodes(n, files).await;
        c
    }

    /// `n` nodes, each in a network namespace of its own on a bridge of
    /// this test, so that `cut` and `heal` can partition them. None (and a
    /// SKIPPED line) where namespaces cannot be made.
    pub async fn start_partitionable(n: u64) -> Option<Cluster> {
        if let Err(e) = Net::available() {
            eprintln!("SKIPPED: network namespaces unavailable here ({e})");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            nodes: Vec::new(),
            extra_args: Vec::new(),
            pki: Pki::new(&dir.path().join("pki")),
            net: Some(Net::new().expect("test network")),
            dir,
        };
        c.start_nodes(n, &[]).await;
        Some(c)
    }

    /// Cut node `id` off from the other nodes (clients still reach it).
    pub fn cut(&self, id: u64) {
        self.net().cut(id);
    }

    /// Reconnect node `id` to the other nodes.
    pub fn heal(&self, id: u64) {
        self.net().heal(id);
    }

    /// The network of a partitionable cluster, for partial, one-way and
    /// lossy faults.
    pub fn net(&self) -> &netns::Net {
        self.net.as_ref().expect("a partitionable cluster")
    }

    async fn start_nodes(&mut self, n: u64, files: &[(&str, &str)]) {
        let c = self;
        for (name, content) in files {
            if *name == "grantd-tls.toml" {
                let mut conf = std::fs::read_to_string(c.pki.config()).unwrap();
                conf.push('\n');
                conf.push_str(content);
                std::fs::write(c.pki.config(), conf).unwrap();
            } else {
                std::fs::write(c.pki.dir.join(name), content).unwrap();
            }
        }
        for id in 1..=n {
            c.add_node_proc(id);
        }
        let client = c.client();
        let members: Vec<pb::Node> = c.nodes.iter().map(|n| n.member()).collect();
        let deadline = Instant::now() + WAIT_MAX;
        for i in 0..c.nodes.len() {
            while client.status_of(&c.nodes[i].api_addr).await.is_err() {
                let id = c.nodes[i].id;
                if let Some(st) = c.nodes[i]
                    .child
                    .as_mut()
                    .and_then(|ch| ch.try_wait().unwrap())
                {
                    panic!("node {id} exited at start ({st}):\n{}", c.log_tail(id));
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not answer within {WAIT_MAX:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        client
            .initialize(&c.nodes[0].api_addr, members)
            .await
            .expect("initialize");
        let leader = c.wait_leader().await;
        c.wait_roster(leader).await;
    }

    /// Until every replica's roster holds the signing key of node
    /// `leader`: a leader registers its key before it signs its first
    /// checkpoint, so a roster read right after the election may not hold
    /// it yet, and that checkpoint would not verify with a trusted-keys
    /// file taken then.
    pub async fn wait_roster(&self, leader: u64) {
        let name = format!("grant-ledger-node-{leader}+");
        for n in &self.nodes {
            let client = self.node_client(n.id);
            wait_for("the leader's signing key in every roster", || async {
                client
                    .roster()
                    .await
                    .is_ok_and(|r| r.keys.iter().any(|k| k.starts_with(&name)))
            })
            .await;
        }
    }

    /// `n` nodes with addresses and data directories, none started and none
    /// initialised: for a cluster whose data directories are seeded first
    /// (`grantd restore`). Start them with `spawn`.
    pub fn prepare(n: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            pki: Pki::new(&dir.path().join("pki")),
            dir,
            nodes: Vec::new(),
            extra_args: Vec::new(),
            net: None,
        };
        for id in 1..=n {
            let node = c.new_node(id);
            c.nodes.push(node);
        }
        c
    }

    fn new_node(&mut self, id: u64) -> NodeProc {
        if let Some(net) = self.net.as_mut() {
            // Its own address in its own namespace: the ports are free.
            net.add(id).expect("node namespace");
            let ip = net.ip(id);
            return NodeProc {
                id,
                api_addr: format!("{ip}:7101"),
                raft_addr: format!("{ip}:7201"),
                metrics_addr: format!("{ip}:7301"),
                data_dir: self.dir.path().join(format!("node{id}")),
                child: None,
                paused: false,
            };
        }
        NodeProc {
            id,
            api_addr: format!("127.0.0.1:{}", free_port()),
            raft_addr: format!("127.0.0.1:{}", free_port()),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir.path().join(format!("node{id}")),
            child: None,
            paused: false,
        }
    }

    /// Create and spawn a node process with a fresh data directory.
    pub fn add_node_proc(&mut self, id: u64) -> &NodeProc {
        let node = self.new_node(id);
        self.nodes.push(node);
        self.spawn(id);
        self.node(id)
    }

    /// The last lines node `id` wrote to its log.
    pub fn log_tail(&self, id: u64) -> String {
        let log = self.dir.path().join(format!("node{id}.log"));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// Whether the nodes serve mTLS (the default) rather than plaintext.
    pub fn secure(&self) -> bool {
        !self.extra_args.iter().any(|a| a == "--insecure")
    }

    /// The TLS flags of node `id` (its certificate, the CA and the roles).
    fn tls_args(&self, id: u64) -> Vec<std::ffi::OsString> {
        if !self.secure() {
            return Vec::new();
        }
        let f = self.pki.node(id);
        vec![
            "--config".into(),
            self.pki.config().into(),
            "--tls-cert-file".into(),
            f.cert.into(),
            "--tls-key-file".into(),
            f.key.into(),
        ]
    }

    /// Start (or restart) node `id` on its address and data directory.
    pub fn spawn(&mut self, id: u64) {
        self.spawn_with_env(id, &[]);
    }

    /// `spawn`, with `env` added to the node's environment (fault
    /// injection: `GRANTD_CRASH_AT`).
    pub fn spawn_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let mut extra: Vec<std::ffi::OsString> = self.tls_args(id);
        extra.extend(self.extra_args.iter().map(Into::into));
        let log_path = self.dir.path().join(format!("node{id}.log"));
        // In its namespace, when partitionable (`ip netns exec` execs
        // grantd: the child's PID is grantd's).
        let net_prefix = self.net.as_ref().map(|net| net.exec_prefix(id));
        let n = self.node_mut(id);
        assert!(n.child.is_none(), "node {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = match &net_prefix {
            Some(p) => {
                let mut c = Command::new(&p[0]);
                c.args(&p[1..]).arg(grantd_bin());
                c
            }
            None => Command::new(grantd_bin()),
        };
        let child = cmd
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--api-addr", &n.api_addr, "--raft-addr", &n.raft_addr])
            .args(["--metrics-addr", &n.metrics_addr])
            // Fast elections, unless the test sets its own timing.
            .args(if extra.iter().any(|a| a == "--election-timeout-min-ms") {
                &[][..]
            } else {
                &[
                    "--heartbeat-interval-ms",
                    "50",
                    "--election-timeout-min-ms",
                    "300",
                    "--election-timeout-max-ms",
                    "600",
                ][..]
            })
            .args(if extra.iter().any(|a| a == "--peer-rpc-timeout-ms") {
                &[][..]
            } else {
                &["--peer-rpc-timeout-ms", "1000"][..]
            })
            .args(if extra.iter().any(|a| a == "--log") {
                &[][..]
            } else {
                &["--log", "info"][..]
            })
            .args(&extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn grantd");
        n.child = Some(child);
    }

    /// kill -9 node `id`.
    pub fn kill(&mut self, id: u64) {
        let n = self.node_mut(id);
        if let Some(mut c) = n.child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
        n.paused = false;
    }

    /// SIGSTOP node `id`: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: u64) {
        let n = self.node_mut(id);
        signal(n.pid().expect("node running"), "STOP");
        n.paused = true;
    }

    /// SIGCONT a paused node.
    pub fn resume(&mut self, id: u64) {
        let n = self.node_mut(id);
        signal(n.pid().expect("node running"), "CONT");
        n.paused = false;
    }

    fn answering(&self) -> impl Iterator<Item = &NodeProc> {
        self.nodes.iter().filter(|n| n.child.is_some() && !n.paused)
    }

    /// A client that knows every node that is running and not paused.
    pub fn answering_client(&self) -> Client {
        Client::new(
            self.answering().map(|n| n.api_addr.clone()).collect(),
            self.options(),
        )
        .unwrap()
    }

    /// Client options of the harness's own identity (every role), or
    /// plaintext when the cluster is insecure.
    pub fn options(&self) -> Options {
        self.options_as(pki::ADMIN)
    }

    /// Client options presenting `spiffe://example.org/<path>`.
    pub fn options_as(&self, path: &str) -> Options {
        if self.secure() {
            self.pki.options(&self.pki.identity(path))
        } else {
            Options::default()
        }
    }

    /// A client of every node calling as `spiffe://example.org/<path>`.
    pub fn client_as(&self, path: &str) -> Client {
        Client::new(
            self.nodes.iter().map(|n| n.api_addr.clone()).collect(),
            self.options_as(path),
        )
        .unwrap()
    }

    /// grantctl, pointed at every node, with the harness's identity.
    pub fn grantctl(&self) -> Command {
        let mut cmd = Command::new(grantd_bin().with_file_name("grantctl"));
        let eps: Vec<String> = self.nodes.iter().map(|n| n.api_addr.clone()).collect();
        cmd.args(["--endpoints", &eps.join(",")]);
        self.grantctl_identity(&mut cmd);
        cmd
    }

    /// Give a grantctl command the harness's identity (or --insecure).
    pub fn grantctl_identity(&self, cmd: &mut Command) {
        if self.secure() {
            let f = self.pki.identity(pki::ADMIN);
            cmd.env("GRANTCTL_CA", f.ca)
                .env("GRANTCTL_CERT", f.cert)
                .env("GRANTCTL_KEY", f.key);
        } else {
            cmd.env("GRANTCTL_INSECURE", "true");
        }
    }

    /// A gRPC channel to `addr` with the harness's identity (connected on
    /// first use), for services the client library does not wrap.
    pub fn channel(&self, addr: &str) -> Option<tonic::transport::Channel> {
        self.client().channel_to(addr).ok()
    }

    /// SIGTERM node `id` and wait for it to exit; returns whether it exited 0.
    pub fn terminate(&mut self, id: u64) -> bool {
        let n = self.node_mut(id);
        let Some(mut c) = n.child.take() else {
            return true;
        };
        signal(c.id(), "TERM");
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                c.kill().ok();
                c.wait().ok();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether node `id` has exited on its own (reaped if so).
    pub fn exited(&mut self, id: u64) -> bool {
        let n = self.node_mut(id);
        match n.child.as_mut().map(|c| c.try_wait().unwrap()) {
            Some(Some(_)) => {
                n.child = None;
                true
            }
            Some(None) => false,
            None => true,
        }
    }

    /// Delete node `id`'s data directory (the node must be stopped).
    pub fn wipe(&mut self, id: u64) {
        let n = self.node(id);
        assert!(n.child.is_none(), "stop node {id} before wiping it");
        std::fs::remove_dir_all(&n.data_dir).ok();
    }

    /// A client that knows every node.
    pub fn client(&self) -> Client {
        self.client_as(pki::ADMIN)
    }

    /// A client bound to node `id`, calling as `spiffe://example.org/<path>`,
    /// that tries once and does not follow the leader.
    pub fn node_client_as(&self, id: u64, path: &str) -> Client {
        let opts = Options {
            attempts_max: 1,
            ..self.options_as(path)
        };
        Client::new(vec![self.node(id).api_addr.clone()], opts).unwrap()
    }

    /// A client bound to one node that does not follow the leader.
    pub fn node_client(&self, id: u64) -> Client {
        let opts = Options {
            attempts_max: 1,
            ..self.options()
        };
        Client::new(vec![self.node(id).api_addr.clone()], opts).unwrap()
    }

    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        self.client().status_of(&self.node(id).api_addr).await.ok()
    }

    /// Wait until a running node reports itself leader and a quorum agrees.
    /// The leader and one of its followers (the lowest id that is not it).
    pub async fn leader_and_follower(&self) -> (u64, u64) {
        let leader = self.wait_leader().await;
        let follower = self
            .nodes
            .iter()
            .map(|n| n.id)
            .find(|&id| id != leader)
            .expect("a cluster of more than one node");
        (leader, follower)
    }

    pub async fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            for n in self.answering() {
                if let Some(s) = self.status(n.id).await {
                    if s.role == "leader"
                        && s.has_leader
                        && s.leader_id == n.id
                        && s.applied_index > 0
                    {
                        return n.id;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every running node has applied the same index, then return
    /// their (node id, state digest, index).
    pub async fn converged_digests(&self) -> Vec<(u64, String, u64)> {
        let client = self.client();
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let mut out = Vec::new();
            for n in self.answering() {
                if let Ok(s) = client.status_with(&n.api_addr, true).await {
                    out.push((n.id, s.state_digest, s.state_digest_index));
                }
            }
            let running = self.answering().count();
            if out.len() == running && out.iter().all(|d| d.2 == out[0].2 && d.2 > 0) {
                return out;
            }
            assert!(Instant::now() < deadline, "nodes did not converge: {out:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Cluster {
    /// The audit chain's size once the refusals made so far are recorded
    /// (they reach the chain within a flush interval): the size after it
    /// held still for a second.
    pub async fn settled_audit_size(&self) -> u64 {
        let client = self.client();
        let size = || async { client.audit_entries(0, 1).await.unwrap().tree_size };
        let mut last = size().await;
        let mut still = 0;
        let deadline = Instant::now() + WAIT_MAX;
        while still < 4 {
            assert!(
                Instant::now() < deadline,
                "the audit chain never held still"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = size().await;
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// Until the newest signed checkpoint covers the whole audit chain (the
    /// leader signs one every checkpoint interval once the log grew).
    pub async fn wait_signed(&self) {
        let client = self.client();
        wait_for("a checkpoint covering the whole log", || async {
            let size = client
                .audit_entries(0, 1)
                .await
                .map(|r| r.tree_size)
                .unwrap_or(0);
            let cp = client
                .latest_checkpoint()
                .await
                .map(|r| r.tree_size)
                .unwrap_or(0);
            size > 0 && cp == size
        })
        .await;
    }

    /// Every audit entry from `from` on, paged through GetEntries.
    pub async fn audit_entries_from(&self, from: u64) -> Vec<grant_proto::audit::Entry> {
        let client = self.client();
        let mut out = Vec::new();
        let mut next = from;
        loop {
            let page = client.audit_entries(next, 1000).await.unwrap().entries;
            if page.is_empty() {
                return out;
            }
            for e in &page {
                let e = grant_client::entry_from_pb(e).unwrap();
                next = e.seq + 1;
                out.push(e);
            }
        }
    }

    /// Refused calls changed nothing but the record of their refusal:
    /// every audit entry appended since the chain held `before` entries is
    /// a `refused` one, and the replicas converge. Returns how many.
    pub async fn only_refusals_since(&self, before: u64) -> usize {
        use grant_proto::audit::Kind;
        let after = self.settled_audit_size().await;
        let since: Vec<_> = self
            .audit_entries_from(before)
            .await
            .into_iter()
            .take_while(|e| e.seq < after)
            .collect();
        assert_eq!(since.len() as u64, after - before, "entries missing");
        for e in &since {
            assert_eq!(
                e.kind,
                Kind::Refused,
                "a refused call changed something: {e:?}"
            );
        }
        self.converged_digests().await;
        since.len()
    }

    /// Issue and check, tasks named `tag-<n>`, until the leader's snapshot is
    /// past `index` by more than openraft's purge batch (256 entries): its log
    /// is then purged behind it, and a node whose log ends at `index` can only
    /// come back through a snapshot.
    pub async fn snapshot_past(&self, client: &Client, index: u64, tag: &str) {
        let mut i = 0;
        wait_for(
            &format!("the leader to snapshot past index {index}"),
            || {
                i += 1;
                let task = format!("{tag}-{i}");
                async move {
                    let r = client.issue_in(issue_req(&task, 600)).await.unwrap();
                    client.check(check_req(&r.token)).await.unwrap();
                    let leader = self.wait_leader().await;
                    self.status(leader)
                        .await
                        .is_some_and(|s| s.snapshot_index > index + 300)
                }
            },
        )
        .await;
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: u64) -> std::path::PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// Export every running node's audit chain, check that they agree on
    /// every entry they all hold and that the chain verifies offline with
    /// the roster's keys; returns how many entries they all hold. `ctx` goes
    /// into every failure message.
    pub async fn chains_agree(&self, ctx: &str) -> usize {
        use grant_proto::audit::export;
        let client = self.client();
        // Every export needs a signed checkpoint to verify: right after the
        // last write the leader may not have signed one yet (it does every
        // checkpoint_interval_ms), nor a follower applied it.
        let deadline = Instant::now() + WAIT_MAX;
        // A node begun from a snapshot answers that it is still fetching
        // the start of the chain from its peers until it has it.
        let chains = loop {
            let mut chains = Vec::new();
            let mut fetching = false;
            for n in self.answering() {
                match client.audit_export(Some(&n.api_addr)).await {
                    Ok(text) => chains.push((n.id, String::from_utf8(text).expect("utf-8 export"))),
                    Err(e) if e.to_string().contains("fetching the entries before it") => {
                        assert!(
                            Instant::now() < deadline,
                            "export of node {}: {e} ({ctx})",
                            n.id
                        );
                        fetching = true;
                    }
                    Err(e) => panic!("export of node {}: {e} ({ctx})", n.id),
                }
            }
            let unsigned = chains
                .iter()
                .any(|(_, t)| !t.lines().any(|l| l.starts_with("{\"type\":\"checkpoint\"")));
            if !fetching && (!unsigned || Instant::now() > deadline) {
                break chains;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let entries = |e: &str| -> Vec<String> {
            e.lines()
                .filter(|l| l.starts_with("{\"type\":\"entry\""))
                .map(str::to_string)
                .collect()
        };
        let all: Vec<(u64, Vec<String>)> = chains.iter().map(|(id, t)| (*id, entries(t))).collect();
        let common = all.iter().map(|(_, e)| e.len()).min().unwrap_or(0);
        for (id, e) in &all[1..] {
            if let Some(i) = (0..common).find(|&i| e[i] != all[0].1[i]) {
                panic!(
                    "chains fork at entry {i}: node {} holds\n{}\nnode {id} holds\n{}\n({ctx})",
                    all[0].0, all[0].1[i], e[i]
                );
            }
        }
        let keys = export::parse_trusted_keys(&client.roster().await.unwrap().keys.join("\n"))
            .expect("roster keys");
        for (id, text) in &chains {
            export::verify(text, &keys)
                .unwrap_or_else(|e| panic!("node {id}'s export does not verify: {e} ({ctx})"));
            export_matches_schema(text)
                .unwrap_or_else(|e| panic!("node {id}'s export: {e} ({ctx})"));
        }
        common
    }
}

/// Wait until the log at `path` satisfies `done`; on timeout, fail with it.
pub async fn wait_log(path: &std::path::Path, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The number logged as `name=N` in a log line.
pub fn log_field(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 1;
    line[at..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {line} is not a number"))
}

/// Every line of an export validates against the JSON Schema published in
/// docs/schema/, which an outside verifier may be written from.
pub fn export_matches_schema(text: &str) -> Result<(), String> {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let v = SCHEMA.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../docs/schema/audit-export-line.schema.json"))
                .expect("the schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    });
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let first = v
            .iter_errors(&value)
            .next()
            .map(|e| format!("{e} at {}", e.instance_path()));
        if let Some(e) = first {
            return Err(format!(
                "line {} does not match docs/schema/audit-export-line.schema.json: {e}",
                i + 1
            ));
        }
    }
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // SIGKILL ends a stopped process too.
                c.kill().ok();
                c.wait().ok();
            }
        }
        if std::thread::panicking() {
            // Keep the node logs of a failed test where a person can read them.
            let keep =
                std::env::temp_dir().join(format!("grant-ledger-failed-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for n in &self.nodes {
                let log = self.dir.path().join(format!("node{}.log", n.id));
                let _ = std::fs::copy(&log, keep.join(format!("node{}.log", n.id)));
            }
            eprintln!("node logs kept in {}", keep.display());
        }
    }
}

/// Send a signal to a process we started, by PID.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Poll `f` until it returns true, at most WAIT_MAX.
pub async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT_MAX;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const AGENT: &str = "spiffe://example.org/agent/planner";

/// grantd flags that lift the active-grant quotas: the benchmarks hold far
/// more grants for one agent than a real one would, to measure the ledger.
pub const NO_QUOTAS: &[&str] = &[
    "--active-grants-per-subject-max",
    "0",
    "--active-grants-per-task-max",
    "0",
];

pub fn issue_req(task: &str, ttl_seconds: u64) -> pb::IssueRequest {
    pb::IssueRequest {
        request_id: String::new(),
        subject: AGENT.into(),
        task_id: task.into(),
        scopes: vec![pb::Scope {
            resource: "github".into(),
            actions: vec!["read".into(), "comment".into()],
        }],
        intent: "triage issue 42".into(),
        ttl_seconds,
    }
}

/// Begin `task` with the harness's defaults: the tools of `issue_req`,
/// the server's default deadline.
pub fn begin_req(task: &str) -> pb::BeginTaskRequest {
    pb::BeginTaskRequest {
        task_id: task.into(),
        intent: "triage issue 42".into(),
        declared_tools: vec!["github".into()],
        deadline_seconds: 0,
    }
}

/// Issue under a task, beginning it if it does not exist yet: the tests
/// and benchmarks that are not about tasks issue into tasks of their own
/// naming. One RPC once the task exists, so measured issues stay issues.
pub trait IssueInTask {
    fn issue_in(
        &self,
        req: pb::IssueRequest,
    ) -> impl std::future::Future<Output = Result<pb::IssueResponse, ClientError>> + Send;
}

impl IssueInTask for Client {
    async fn issue_in(&self, req: pb::IssueRequest) -> Result<pb::IssueResponse, ClientError> {
        match self.issue(req.clone()).await {
            Err(e) if e.code() == Some("not_found") => {}
            other => return other,
        }
        let mut tools: Vec<String> = req.scopes.iter().map(|s| s.resource.clone()).collect();
        tools.dedup();
        let begin = pb::BeginTaskRequest {
            declared_tools: tools,
            ..begin_req(&req.task_id)
        };
        match self.begin_task(begin).await {
            // Begun meanwhile by another caller, or for other tools.
            Ok(_) => {}
            Err(e) if e.code() == Some("already_exists") => {}
            Err(e) => return Err(e),
        }
        self.issue(req).await
    }
}

/// Close `task`: abort it with `abort`'s reason, or complete it; the state
/// it was closed in. Request ids are left to the client library.
pub async fn close_task(
    client: &Client,
    task: &str,
    abort: Option<&str>,
) -> Result<pb::TaskState, ClientError> {
    match abort {
        Some(reason) => client
            .abort_task(pb::AbortTaskRequest {
                request_id: String::new(),
                task_id: task.into(),
                reason: reason.into(),
            })
            .await
            .map(|_| pb::TaskState::Aborted),
        None => client
            .complete_task(pb::CompleteTaskRequest {
                request_id: String::new(),
                task_id: task.into(),
                reason: String::new(),
            })
            .await
            .map(|_| pb::TaskState::Completed),
    }
}

/// The gRPC code and `x-grant-error` of a call expected to be refused.
pub fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (tonic::Code, String) {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(ClientError::Status(s)) => (
            s.code(),
            grant_client::error_code(&s).unwrap_or_default().to_string(),
        ),
        Err(e) => panic!("expected a status, got {e}"),
    }
}

/// Revoke `grant_id` with a reason, request id left to the client library.
pub fn revoke_req(grant_id: &str, reason: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        request_id: String::new(),
        grant_id: grant_id.into(),
        reason: reason.into(),
    }
}

pub fn check_req(token: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        token: token.into(),
        identity: AGENT.into(),
        resource: "github".into(),
        action: "read".into(),
        attributes: Default::default(),
    }
}

pub fn reason(r: &pb::CheckResponse) -> pb::Reason {
    pb::Reason::try_from(r.reason).unwrap()
}

/// A linearizable List of one task's grants, first page.
pub fn list_task_req(task: &str, page_size: u32) -> pb::ListRequest {
    pb::ListRequest {
        by: Some(pb::list_request::By::TaskId(task.into())),
        page_size,
        page_token: String::new(),
        allow_stale: false,
    }
}

/// GET `path` from a node's metrics port over plain HTTP/1.1; the body.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of one sample line (`name{labels} value`) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
