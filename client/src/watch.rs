//! Following revocations: a Watch that survives node loss, and a checker
//! that caches allows and drops them the moment the watch says so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grant_proto::v1 as pb;
use grant_proto::v1::grants_client::GrantsClient;
use tonic::Streaming;

use crate::{error_code, Client, ClientError};

/// Where a watch starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    /// From the events applied after the call.
    Now,
    /// From the events of log entries at this index and later.
    LogIndex(u64),
    /// After this event (its seq and entry hash): resume.
    After { seq: u64, hash: Vec<u8> },
}

/// What a watch yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Events in audit order; none is ever yielded twice nor skipped, across
    /// reconnections to other nodes.
    Events(Vec<pb::WatchEvent>),
    /// Every event before audit size `size` has been yielded; `confirmed`
    /// when the node checked with the leader that it was not behind.
    Progress { size: u64, confirmed: bool },
}

/// A Watch that reconnects to another node when its node fails, goes
/// quiet, or stops, and resumes right after the last event it yielded.
pub struct Watcher {
    client: Arc<Client>,
    start: Start,
    /// The seq and hash of the last event yielded, or of the entry before
    /// the last progress mark: where to resume.
    cursor: Option<(u64, Vec<u8>)>,
    stream: Option<Streaming<pb::WatchResponse>>,
    /// Index into the client's endpoints of the node watched.
    node: usize,
    /// A stream silent for this long is taken for dead (the server sends a
    /// confirmed mark every second while it can).
    pub idle_timeout: Duration,
}

impl Watcher {
    pub fn new(client: Arc<Client>, start: Start) -> Watcher {
        Watcher {
            client,
            start,
            cursor: None,
            stream: None,
            node: 0,
            idle_timeout: Duration::from_secs(5),
        }
    }

    fn request(&self) -> pb::WatchRequest {
        use pb::watch_request::Start as S;
        match (&self.cursor, &self.start) {
            (Some((seq, hash)), _) => pb::WatchRequest {
                start: Some(S::AfterSeq(*seq)),
                after_hash: hash.clone(),
            },
            (None, Start::Now) => pb::WatchRequest::default(),
            (None, Start::LogIndex(i)) => pb::WatchRequest {
                start: Some(S::FromLogIndex(*i)),
                after_hash: Vec::new(),
            },
            (None, Start::After { seq, hash }) => pb::WatchRequest {
                start: Some(S::AfterSeq(*seq)),
                after_hash: hash.clone(),
            },
        }
    }

    /// The next update. Fails only when the stream cannot resume: told to
    /// resync (`watch_resync`: another history), asked to start before the
    /// audit chain's start (`pruned`: so on every node), refused (no role),
    /// or no node answered in `attempts_max` tries.
    pub async fn next(&mut self) -> Result<Update, ClientError> {
        let mut failures = 0;
        let mut backoff = self.client.options.backoff_initial;
        loop {
            if self.stream.is_none() {
                let addr = self.client.endpoints[self.node % self.client.endpoints.len()].clone();
                let req = self.request();
                match GrantsClient::new(self.client.channel(&addr)?)
                    .watch(req)
                    .await
                {
                    Ok(s) => self.stream = Some(s.into_inner()),
                    Err(s) if !resumable(&s) => return Err(ClientError::Status(s)),
                    Err(s) => {
                        failures += 1;
                        if failures >= self.client.options.attempts_max {
                            return Err(ClientError::Status(s));
                        }
                        self.node += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.client.options.backoff_max);
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("connected above");
            match tokio::time::timeout(self.idle_timeout, stream.message()).await {
                Ok(Ok(Some(m))) => {
                    if let Some(last) = m.events.last() {
                        self.cursor = Some((last.seq, last.entry_hash.clone()));
                        return Ok(Update::Events(m.events));
                    }
                    if let Some(seq) = m.progress_size.checked_sub(1) {
                        if self.cursor.as_ref().is_none_or(|(c, _)| *c < seq) {
                            self.cursor = Some((seq, m.progress_hash));
                        }
                    }
                    return Ok(Update::Progress {
                        size: m.progress_size,
                        confirmed: m.confirmed,
                    });
                }
                Ok(Err(s)) if !resumable(&s) => {
                    self.stream = None;
                    return Err(ClientError::Status(s));
                }
                // Ended, failed or went quiet: resume on the next node,
                // after a backoff (a node that accepts and fails at once
                // must not turn this into a busy loop).
                _ => {
                    self.stream = None;
                    self.node += 1;
                    failures += 1;
                    if failures >= self.client.options.attempts_max {
                        return Err(ClientError::Status(tonic::Status::unavailable(
                            "no node kept a watch stream open",
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.client.options.backoff_max);
                }
            }
        }
    }
}

/// Whether a watch that failed with `s` may resume elsewhere.
fn resumable(s: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(error_code(s), Some("watch_resync" | "pruned"))
        && !matches!(
            s.code(),
            Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
        )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The key of a cached allow: the whole request, attributes included.
type Key = (String, String, String, String, Vec<(String, String)>);

fn key_of(r: &pb::CheckRequest) -> Key {
    let mut attrs: Vec<_> = r
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attrs.sort();
    (
        r.token.clone(),
        r.identity.clone(),
        r.resource.clone(),
        r.action.clone(),
        attrs,
    )
}

struct Cached {
    grant_id: String,
    task_id: String,
    /// The earlier of the grant's expiry and the cache's own bound.
    until_ms: i64,
}

#[derive(Default)]
struct Cache {
    allows: HashMap<Key, Cached>,
    by_grant: HashMap<String, HashSet<Key>>,
    by_task: HashMap<String, HashSet<Key>>,
    /// Audit size every event before which has been applied to the cache.
    applied_size: u64,
    /// The watch has delivered something: its start is at or before
    /// `applied_size`. Until then nothing is cached (a revocation between
    /// a check and the start of the watch would never be seen).
    started: bool,
    /// When the watch last confirmed it was complete (None: not live).
    confirmed_at: Option<Instant>,
}

impl Cache {
    fn insert(&mut self, key: Key, c: Cached) {
        self.by_grant
            .entry(c.grant_id.clone())
            .or_default()
            .insert(key.clone());
        self.by_task
            .entry(c.task_id.clone())
            .or_default()
            .insert(key.clone());
        self.allows.insert(key, c);
    }

    fn drop_keys(&mut self, keys: Option<HashSet<Key>>) {
        for k in keys.into_iter().flatten() {
            if let Some(c) = self.allows.remove(&k) {
                if let Some(s) = self.by_grant.get_mut(&c.grant_id) {
                    s.remove(&k);
                }
                if let Some(s) = self.by_task.get_mut(&c.task_id) {
                    s.remove(&k);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.allows.clear();
        self.by_grant.clear();
        self.by_task.clear();
    }

    fn apply(&mut self, e: &pb::WatchEvent) {
        use pb::watch_event::Kind;
        match Kind::try_from(e.kind).unwrap_or(Kind::Unspecified) {
            Kind::Revoked | Kind::Expired => {
                let keys = self.by_grant.remove(&e.grant_id);
                self.drop_keys(keys);
            }
            Kind::TaskCompleted | Kind::TaskAborted | Kind::TaskExpired => {
                let keys = self.by_task.remove(&e.task_id);
                self.drop_keys(keys);
            }
            // A new policy may decide differently; an unknown event kind
            // may mean anything.
            Kind::PolicyChanged | Kind::Unspecified => self.clear(),
        }
        self.applied_size = self.applied_size.max(e.seq + 1);
    }
}

/// A checker for tool servers that answers repeated allows from a cache,
/// kept true by a Watch: a revocation, expiry, task completion or policy
/// change drops the allows it touches as soon as its event arrives.
///
/// Cached allows are not recorded in the audit log (only the Check that
/// filled the cache is), and last at most `ttl`. The cache is used only
/// while the watch has confirmed, within `fresh_within`, that it is
/// complete; otherwise every check goes to the cluster.
pub struct CachingChecker {
    client: Arc<Client>,
    cache: Arc<Mutex<Cache>>,
    pub ttl: Duration,
    pub fresh_within: Duration,
    watch_task: tokio::task::JoinHandle<()>,
}

impl Drop for CachingChecker {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

impl CachingChecker {
    /// Start the watch (from now) and return the checker.
    pub fn new(client: Arc<Client>) -> CachingChecker {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let watch_task = tokio::spawn(follow(
            Watcher::new(client.clone(), Start::Now),
            cache.clone(),
        ));
        CachingChecker {
            client,
            cache,
            ttl: Duration::from_secs(60),
            fresh_within: Duration::from_secs(3),
            watch_task,
        }
    }

    /// Whether the watch is live: the cache is in use.
    pub fn live(&self) -> bool {
        let c = self.cache.lock().expect("cache lock");
        c.confirmed_at
            .is_some_and(|t| t.elapsed() <= self.fresh_within)
    }

    /// The audit size the cache reflects: every event before it has been
    /// applied (a receipt's `audit_seq` below it is covered).
    pub fn applied_size(&self) -> u64 {
        self.cache.lock().expect("cache lock").applied_size
    }

    /// Allows currently cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("cache lock").allows.len()
    }

    /// Decide `req`: from the cache when a live watch vouches for it, from
    /// the cluster otherwise. Returns the response and whether it came from
    /// the cache (a cached answer carries no receipt).
    pub async fn check(
        &self,
        req: pb::CheckRequest,
    ) -> Result<(pb::CheckResponse, bool), ClientError> {
        let key = key_of(&req);
        {
            let c = self.cache.lock().expect("cache lock");
            let fresh = c
                .confirmed_at
                .is_some_and(|t| t.elapsed() <= self.fresh_within);
            if let Some(hit) = c
                .allows
                .get(&key)
                .filter(|h| fresh && h.until_ms > now_ms())
            {
                return Ok((
                    pb::CheckResponse {
                        decision: pb::Decision::Allow as i32,
                        reason: pb::Reason::Allowed as i32,
                        grant_id: hit.grant_id.clone(),
                        task_id: hit.task_id.clone(),
                        ..Default::default()
                    },
                    true,
                ));
            }
        }
        let r = self.client.check(req).await?;
        if r.decision == pb::Decision::Allow as i32 {
            let seq = r.receipt.as_ref().map(|x| x.audit_seq).unwrap_or(u64::MAX);
            let mut c = self.cache.lock().expect("cache lock");
            // Cache only if the watch began before this check's entry and
            // has not yet passed it: a revocation after it is then still
            // to come and will drop it.
            if c.started && c.applied_size <= seq {
                let until_ms = r
                    .expires_at_ms
                    .min(now_ms().saturating_add(self.ttl.as_millis() as i64));
                c.insert(
                    key,
                    Cached {
                        grant_id: r.grant_id.clone(),
                        task_id: r.task_id.clone(),
                        until_ms,
                    },
                );
            }
        }
        Ok((r, false))
    }
}

/// Apply the watch's events to the cache for as long as the checker lives.
async fn follow(mut w: Watcher, cache: Arc<Mutex<Cache>>) {
    loop {
        match w.next().await {
            Ok(Update::Events(events)) => {
                let mut c = cache.lock().expect("cache lock");
                c.started = true;
                for e in &events {
                    c.apply(e);
                }
            }
            Ok(Update::Progress { size, confirmed }) => {
                let mut c = cache.lock().expect("cache lock");
                c.started = true;
                c.applied_size = c.applied_size.max(size);
                if confirmed {
                    c.confirmed_at = Some(Instant::now());
                }
            }
            Err(_) => {
                // Cannot resume (another history, or no node): forget
                // everything and start over from now.
                {
                    let mut c = cache.lock().expect("cache lock");
                    c.clear();
                    c.confirmed_at = None;
                    c.started = false;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                w = Watcher::new(w.client.clone(), Start::Now);
            }
        }
    }
}
