//! grant-ledger and etcd side by side: a three-node cluster of each on
//! loopback, driven by the same load generator (same client layout,
//! concurrency and duration), with the same work:
//!
//! - issue: grant-ledger Issue; etcd lease grant plus a 200-byte put bound
//!   to the lease;
//! - check: grant-ledger Check (audited); etcd linearizable range;
//! - revoke: grant-ledger Revoke; etcd lease revoke;
//! - mixed: 10% issue, 85% check, 5% revoke.
//!
//! Prints ops/s, p50, p99, p999 and the CPU seconds each cluster used, the
//! ratio grant-ledger/etcd and issue #24's targets beside them (never
//! asserted); writes the raw results as JSON. `bench/compare.sh` installs
//! Debian's etcd-server when missing and runs this.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use grant_tests::grant_client::v1 as pb;
use grant_tests::*;
use tonic::transport::Channel;

mod etcd {
    tonic::include_proto!("etcdserverpb");
}
use etcd::kv_client::KvClient;
use etcd::lease_client::LeaseClient;

#[derive(Parser)]
#[command(about = "grant-ledger against etcd, same load, same machine")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "issue,check,revoke,mixed"
    )]
    ops: Vec<String>,
    /// The etcd server binary (Debian's etcd-server installs /usr/bin/etcd).
    #[arg(long, default_value = "etcd")]
    etcd_bin: String,
    /// Run grant-ledger with mTLS, as deployed (default: plaintext, as etcd
    /// runs here, so the two pay for the same transport).
    #[arg(long)]
    grant_mtls: bool,
    /// Where to write the raw results.
    #[arg(long, default_value = "target/compare.json")]
    json: std::path::PathBuf,
}

/// The most revokes per second a run prepares for (grants or leases are
/// made before the clock starts; a run that exhausts them ends early and
/// is timed to that point).
const REVOKES_PER_SECOND_MAX: usize = 10_000;
/// Items each client checks in turn.
const CHECK_POOL: usize = 50;
/// Bytes of the value an etcd issue puts (about a grant record's size).
const ETCD_VALUE_BYTES: usize = 200;

/// A three-node etcd cluster on loopback, stopped by PID on drop.
struct EtcdCluster {
    _dir: tempfile::TempDir,
    procs: Vec<Child>,
    endpoints: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    async fn start(bin: &str) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let peers: Vec<(String, u16, u16)> = (1..=3)
            .map(|i| (format!("e{i}"), free_port(), free_port()))
            .collect();
        let initial = peers
            .iter()
            .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (name, client, peer) in &peers {
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            let c = format!("http://127.0.0.1:{client}");
            let p = format!("http://127.0.0.1:{peer}");
            procs.push(
                Command::new(bin)
                    .args(["--name", name, "--data-dir"])
                    .arg(dir.path().join(name))
                    .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                    .args([
                        "--listen-peer-urls",
                        &p,
                        "--initial-advertise-peer-urls",
                        &p,
                    ])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "grant-ledger-bench"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("cannot start {bin}: {e} (bench/compare.sh installs it)")
                    }),
            );
        }
        let endpoints: Vec<String> = peers
            .iter()
            .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
            .collect();
        let e = EtcdCluster {
            _dir: dir,
            procs,
            endpoints,
        };
        // Ready when a linearizable read succeeds on every member.
        let deadline = Instant::now() + Duration::from_secs(60);
        for ep in &e.endpoints {
            loop {
                let ok = match Channel::from_shared(ep.clone()).unwrap().connect().await {
                    Ok(ch) => KvClient::new(ch)
                        .range(etcd::RangeRequest {
                            key: b"ready".to_vec(),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd did not come up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        e
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|c| c.id()).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.procs {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// CPU seconds (user + system) used so far by these processes.
fn cpu_seconds(pids: &[u32], ticks_per_s: f64) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            // Fields after the command name (which may hold spaces).
            let rest = &s[s.rfind(')').unwrap_or(0) + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0))
                / ticks_per_s
        })
        .sum()
}

/// The system under load, with what one client needs to talk to it.
/// Made once per client, so the etcd variant's size does not matter.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Sys {
    Grants(Arc<grant_tests::grant_client::Client>),
    Etcd {
        kv: KvClient<Channel>,
        lease: LeaseClient<Channel>,
    },
}

/// What an issue made: grant (id, token) or (lease id, key).
#[derive(Clone)]
enum Item {
    Grant(String, String),
    Lease(i64, Vec<u8>),
}

impl Sys {
    async fn issue(&mut self, w: usize, i: usize) -> Result<Item, String> {
        match self {
            Sys::Grants(c) => {
                // A task per client and thousand grants: one Issue per
                // operation, as the issue asks (a task per grant made every
                // operation a BeginTask and an Issue, two entries).
                let r = c
                    .issue_in(issue_req(&format!("bench-{w}-{}", i / 1000), 3600))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Item::Grant(r.grant.unwrap().grant_id, r.token))
            }
            Sys::Etcd { kv, lease } => {
                let l = lease
                    .lease_grant(etcd::LeaseGrantRequest { ttl: 3600, id: 0 })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let key = format!("grants/{w}/{i}").into_bytes();
                kv.put(etcd::PutRequest {
                    key: key.clone(),
                    value: vec![b'x'; ETCD_VALUE_BYTES],
                    lease: l.id,
                })
                .await
                .map_err(|e| e.to_string())?;
                Ok(Item::Lease(l.id, key))
            }
        }
    }

    async fn check(&mut self, item: &Item) -> Result<(), String> {
        match (self, item) {
            (Sys::Grants(c), Item::Grant(_, token)) => c
                .check(check_req(token))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (Sys::Etcd { kv, .. }, Item::Lease(_, key)) => kv
                .range(etcd::RangeRequest {
                    key: key.clone(),
                    serializable: false,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => unreachable!("items match their system"),
        }
    }

    async fn revoke(&mut self, item: &Item) -> Result<(), String> {
        match (self, item) {
            (Sys::Grants(c), Item::Grant(id, _)) => c
                .revoke(pb::RevokeRequest {
                    request_id: String::new(),
                    grant_id: id.clone(),
                    reason: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (Sys::Etcd { lease, .. }, Item::Lease(id, _)) => lease
                .lease_revoke(etcd::LeaseRevokeRequest { id: *id })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => unreachable!("items match their system"),
        }
    }
}

#[derive(Default)]
struct Outcome {
    ops: usize,
    errors: usize,
    lat: Vec<Duration>,
    seconds: f64,
    cpu_s: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// One timed run of `op` with `clients` concurrent clients.
async fn run(
    sys: &[Sys],
    pids: &[u32],
    ticks: f64,
    op: &str,
    clients: usize,
    secs: u64,
) -> Outcome {
    // What checks and revokes work on is made before the clock starts.
    let per_client = match op {
        "issue" => 0,
        "revoke" => (REVOKES_PER_SECOND_MAX * secs as usize).div_ceil(clients),
        _ => CHECK_POOL,
    };
    // Every client fills its own pool at once (one after the other took
    // minutes for a revoke run).
    let mut filling = Vec::new();
    for w in 0..clients {
        let mut s = sys[w % sys.len()].clone();
        filling.push(tokio::spawn(async move {
            let mut pool = Vec::with_capacity(per_client);
            for i in 0..per_client {
                pool.push(s.issue(w, i).await.expect("preparing the run"));
            }
            (s, pool)
        }));
    }
    let mut pools = Vec::new();
    for f in filling {
        pools.push(f.await.expect("a client preparing the run"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_seconds(pids, ticks);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, (mut s, mut pool)) in pools.into_iter().enumerate() {
        let (stop, op) = (stop.clone(), op.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i, mut revoked) = (Vec::new(), 0usize, 0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                // mixed: of every 20 operations, 2 issue, 1 revokes, 17 check.
                let kind = match op.as_str() {
                    "mixed" => match i % 20 {
                        0 | 10 => "issue",
                        5 => "revoke",
                        _ => "check",
                    },
                    other => other,
                };
                let t = Instant::now();
                let r = match kind {
                    "issue" => s.issue(w, 1_000_000 + i).await.map(|it| pool.push(it)),
                    "check" => s.check(&pool[i % pool.len()].clone()).await,
                    "revoke" => {
                        if revoked >= pool.len() {
                            break;
                        }
                        revoked += 1;
                        s.revoke(&pool[revoked - 1].clone()).await
                    }
                    other => panic!("unknown op {other}"),
                };
                match r {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors, Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome::default();
    let mut last = start;
    for t in tasks {
        let (l, e, end) = t.await.unwrap();
        out.lat.extend(l);
        out.errors += e;
        last = last.max(end);
    }
    out.seconds = last.duration_since(start).as_secs_f64().min(secs as f64);
    out.cpu_s = cpu_seconds(pids, ticks) - cpu0;
    out.ops = out.lat.len();
    out.lat.sort();
    out
}

/// Issue #24's targets at 64 clients: throughput ratio at least, p99 at
/// most half of etcd's.
fn goal(op: &str) -> Option<f64> {
    match op {
        "issue" => Some(3.0),
        "check" | "revoke" => Some(2.0),
        _ => None,
    }
}

/// Issue #24's target for one client's audited check: p50 at most this
/// (a Raft round trip plus one fdatasync is about 0.15 ms here).
const CHECK_P50_MS_ONE_CLIENT: f64 = 0.5;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let gl = if args.grant_mtls {
        Cluster::start_with(3, NO_QUOTAS).await
    } else {
        Cluster::start_with(3, &[&["--insecure"], NO_QUOTAS].concat()).await
    };
    let gl_pids: Vec<u32> = gl.nodes.iter().filter_map(|n| n.pid()).collect();
    let gl_sys = vec![Sys::Grants(Arc::new(gl.client()))];
    let ec = EtcdCluster::start(&args.etcd_bin).await;
    let mut etcd_sys = Vec::new();
    for ep in &ec.endpoints {
        let ch = Channel::from_shared(ep.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        etcd_sys.push(Sys::Etcd {
            kv: KvClient::new(ch.clone()),
            lease: LeaseClient::new(ch),
        });
    }
    println!(
        "grant-ledger ({}) and etcd, three nodes each on loopback, {} s per run; \
         etcd clients spread over its members, grant-ledger's follow the leader",
        if args.grant_mtls {
            "mTLS"
        } else {
            "plaintext, as etcd"
        },
        args.seconds
    );
    println!(
        "{:<7} {:>4} | {:>8} {:>7} {:>7} {:>7} {:>6} | {:>8} {:>7} {:>7} {:>7} {:>6} | {:>6} {:>6}  goal",
        "op", "cli", "gl op/s", "p50", "p99", "p999", "cpu s", "etcd", "p50", "p99", "p999", "cpu s",
        "x ops", "x p99"
    );
    let mut json = Vec::new();
    for op in &args.ops {
        for &n in &args.clients {
            let g = run(&gl_sys, &gl_pids, ticks, op, n, args.seconds).await;
            let e = run(&etcd_sys, &ec.pids(), ticks, op, n, args.seconds).await;
            let rate = |o: &Outcome| o.ops as f64 / o.seconds.max(1e-9);
            let ratio = rate(&g) / rate(&e).max(1e-9);
            let p99_ratio = pct(&g.lat, 0.99) / pct(&e.lat, 0.99).max(1e-9);
            let verdict = match goal(op) {
                Some(x) if n == 64 => format!(
                    "{}x ops, p99 <= 0.5x: {}",
                    x,
                    if ratio >= x && p99_ratio <= 0.5 {
                        "met"
                    } else {
                        "NOT met"
                    }
                ),
                _ if op == "check" && n == 1 => format!(
                    "p50 <= {CHECK_P50_MS_ONE_CLIENT} ms: {}",
                    if pct(&g.lat, 0.5) <= CHECK_P50_MS_ONE_CLIENT {
                        "met"
                    } else {
                        "NOT met"
                    }
                ),
                _ => String::new(),
            };
            println!(
                "{:<7} {:>4} | {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>6.1} | {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>6.1} | {:>6.2} {:>6.2}  {}",
                op, n,
                rate(&g), pct(&g.lat, 0.5), pct(&g.lat, 0.99), pct(&g.lat, 0.999), g.cpu_s,
                rate(&e), pct(&e.lat, 0.5), pct(&e.lat, 0.99), pct(&e.lat, 0.999), e.cpu_s,
                ratio, p99_ratio, verdict
            );
            for (system, o) in [("grant-ledger", &g), ("etcd", &e)] {
                json.push(serde_json::json!({
                    "system": system, "op": op, "clients": n,
                    "ops_per_s": rate(o), "ops": o.ops, "errors": o.errors,
                    "seconds": o.seconds, "cpu_seconds": o.cpu_s,
                    "p50_ms": pct(&o.lat, 0.5), "p99_ms": pct(&o.lat, 0.99),
                    "p999_ms": pct(&o.lat, 0.999),
                }));
            }
        }
    }
    if let Some(d) = args.json.parent() {
        std::fs::create_dir_all(d).ok();
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&serde_json::json!({
            "grant_ledger_transport": if args.grant_mtls { "mtls" } else { "plaintext" },
            "seconds_per_run": args.seconds,
            "results": json,
        }))
        .unwrap(),
    )
    .unwrap();
    println!("raw results: {}", args.json.display());
}
