//! Every size, count, queue and rate the server enforces, in one place.
//!
//! A request over a limit is refused with InvalidArgument (a field too large)
//! or ResourceExhausted (a queue full) and changes nothing. docs/limits.md
//! lists them for users; keep the two in step.

/// Bytes in a request id (printable ASCII).
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Bytes in a subject or identity (a SPIFFE ID). SPIFFE itself caps URIs at 2048.
pub const SUBJECT_BYTES_MAX: usize = 2048;
/// Bytes in a SPIFFE trust domain name.
pub const TRUST_DOMAIN_BYTES_MAX: usize = 255;
/// Bytes in a task id.
pub const TASK_ID_BYTES_MAX: usize = 256;
/// Bytes in the free-text intent of a grant.
pub const INTENT_BYTES_MAX: usize = 4096;
/// Scopes in one grant.
pub const SCOPES_PER_GRANT_MAX: usize = 16;
/// Actions in one scope.
pub const ACTIONS_PER_SCOPE_MAX: usize = 16;
/// Bytes in a resource (tool) name.
pub const RESOURCE_BYTES_MAX: usize = 256;
/// Bytes in an action name.
pub const ACTION_BYTES_MAX: usize = 64;
/// Bytes in a revoke reason.
pub const REVOKE_REASON_BYTES_MAX: usize = 512;
/// A grant token (a signed JWT), presented or minted: a grant whose token
/// would be longer (very many or very long scopes) is refused at Issue.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;
/// Tokens whose signature a node remembers as verified (by SHA-256 of the
/// token, with the grant each names: about 150 bytes each); beyond it the
/// cache starts over.
pub const VERIFIED_TOKENS_CACHED_MAX: usize = 65_536;
/// Decoded grant records apply keeps for the checks that read them (about
/// 1 KiB each); beyond it the cache starts over.
pub const GRANTS_CACHED_MAX: usize = 16_384;
/// Grants one task may hold; completing a task revokes them in one entry.
pub const GRANTS_PER_TASK_MAX: usize = 10_000;
/// Callers whose issue-rate buckets a node keeps before it drops those
/// that have refilled (issue_rate_per_caller).
pub const RATE_LIMITED_CALLERS_MAX: usize = 10_000;
/// Highest `delegation_depth_max` a config may set (0 turns delegation off).
pub const DELEGATION_DEPTH_CEILING: u32 = 16;
/// Tools a task may declare when it begins.
pub const TASK_DECLARED_TOOLS_MAX: usize = 64;
/// Bytes in the reason given to complete or abort a task.
pub const TASK_CLOSE_REASON_BYTES_MAX: usize = 512;
/// The reason given for a prune of the audit chain (recorded in its entry).
pub const PRUNE_REASON_BYTES_MAX: usize = 512;
/// Upper bound any task deadline configuration may take (90 days).
pub const TASK_DEADLINE_SECONDS_CEILING: u64 = 90 * 24 * 60 * 60;
/// Tasks past their deadline the sweep closes in one log entry (their
/// grants have expired by then: closing one writes the task and an entry).
pub const SWEEP_TASKS_MAX: usize = 1000;
/// Grants in one page of List.
pub const LIST_PAGE_SIZE_MAX: u32 = 500;
/// Page size of List when the request says 0.
pub const LIST_PAGE_SIZE_DEFAULT: u32 = 100;
/// Bytes in one gRPC message, in either direction, on the public API.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Longest RPC name kept as a metrics label; longer or unknown ones
/// (Unimplemented) are counted as "other", so labels stay bounded.
pub const RPC_NAME_BYTES_MAX: usize = 128;
/// How long a follower waits to connect to its leader's API port when it
/// forwards a request (docs/api.md, "On a follower").
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 500;
/// Leaders' API addresses a node keeps a forwarding channel to.
pub const FORWARD_CHANNELS_MAX: usize = 64;
/// Bytes in one gRPC message between peers (append entries, snapshot chunks).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a Backup call waits for a snapshot that covers its read point.
pub const BACKUP_SNAPSHOT_WAIT_MS: u64 = 120_000;
/// Bytes of snapshot data in one chunk sent to a peer.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Checks waiting to be batched into a log entry; beyond it Check answers
/// ResourceExhausted.
pub const PENDING_CHECKS_MAX: usize = 8192;
/// Check batches in flight through Raft at once. One: checks that arrive
/// while a batch is in Raft wait and go together in the next, and on a
/// CPU-bound node fewer, larger entries beat pipelining (8 in flight: 3.3-
/// 3.6k checks/s at 64 clients; 1: 4.4-4.7k, bench/HISTORY.md).
pub const CHECK_BATCHES_IN_FLIGHT_MAX: usize = 1;
/// Issues, and revokes, waiting to be batched into a log entry (each kind
/// its own queue); beyond it the request answers ResourceExhausted.
pub const PENDING_WRITES_MAX: usize = 4096;
/// Issues, or revokes, in one log entry (group commit). Each is decided on
/// the state the ones before it in the entry left, found by a search of
/// their writes, so a batch stays small; 64 clients fill one.
pub const WRITES_PER_ENTRY_MAX: usize = 64;
/// Batches of issues, and of revokes, in flight through Raft at once (as
/// for checks).
pub const WRITE_BATCHES_IN_FLIGHT_MAX: usize = 1;
/// Writes (Revoke, CompleteTask, admin, and batches of checks or issues) in
/// flight through Raft at once on one node; beyond it the request answers
/// ResourceExhausted.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4096;
/// Grants the expiry sweep retires in one log entry. Applying one takes
/// about a quarter of a millisecond (the grant rewritten, its indexes and an
/// audit entry): 250 keep an entry to tens of milliseconds, so checks queued
/// behind it wait no longer than that.
pub const SWEEP_GRANTS_MAX: usize = 250;
/// Pause between back-to-back sweeps while a backlog of expired grants is
/// retired (each sweep full), so that other entries interleave.
pub const SWEEP_BACKLOG_PAUSE_MS: u64 = 20;
/// Dedupe records the sweep drops in one log entry.
pub const SWEEP_DEDUPE_MAX: usize = 1000;
/// Time a request id is remembered after it was applied.
pub const DEDUPE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Retired grants the sweep removes from the state in one log entry (each
/// a few key removals, no audit entry).
pub const SWEEP_PURGE_MAX: usize = 1000;
/// Upper bound of `clock_skew_margin_ms` (a day): a grant stays in the
/// state at most this long past its expiry.
pub const CLOCK_SKEW_MARGIN_MS_CEILING: u64 = 24 * 60 * 60 * 1000;
/// Upper bound any TTL configuration may take (30 days).
pub const TTL_SECONDS_CEILING: u64 = 30 * 24 * 60 * 60;
/// Bytes in a serialized log entry.
pub const LOG_ENTRY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Size at which the Raft log closes a chunk file and starts the next. A
/// purge behind a snapshot removes whole closed chunks only, so this is
/// about how much log a node keeps on disk beyond what openraft keeps.
pub const LOG_CHUNK_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of encoded log entries the Raft log keeps in memory for
/// replication and apply to read without touching the disk.
pub const LOG_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Entries the Raft log keeps in that cache, whatever their size.
pub const LOG_CACHE_ENTRIES_MAX: usize = 100_000;
const _: () = assert!(LOG_ENTRY_BYTES_MAX < LOG_CHUNK_BYTES);

/// Upper bound on the encoded size of one check in a batch entry.
pub const CHECK_ENCODED_BYTES_MAX: usize = SUBJECT_BYTES_MAX
    + RESOURCE_BYTES_MAX
    + ACTION_BYTES_MAX
    + SUBJECT_BYTES_MAX
    + CHECK_ATTRIBUTES_MAX * (CHECK_ATTRIBUTE_NAME_BYTES_MAX + CHECK_ATTRIBUTE_VALUE_BYTES_MAX + 8)
    + 512;

/// Upper bound on the encoded size of one BeginTask command.
pub const BEGIN_TASK_ENCODED_BYTES_MAX: usize = TASK_ID_BYTES_MAX
    + SUBJECT_BYTES_MAX
    + INTENT_BYTES_MAX
    + TASK_DECLARED_TOOLS_MAX * (RESOURCE_BYTES_MAX + 8)
    + 1024;
const _: () = assert!(2 * BEGIN_TASK_ENCODED_BYTES_MAX < MESSAGE_BYTES_MAX);

/// Upper bound on the encoded size of one issue command.
pub const ISSUE_ENCODED_BYTES_MAX: usize = REQUEST_ID_BYTES_MAX
    + SUBJECT_BYTES_MAX
    + TASK_ID_BYTES_MAX
    + INTENT_BYTES_MAX
    + SCOPES_PER_GRANT_MAX
        * (RESOURCE_BYTES_MAX + ACTIONS_PER_SCOPE_MAX * (ACTION_BYTES_MAX + 8) + 32)
    + 1024;

// Relations the code relies on, checked at compile time.
const _: () = assert!(LIST_PAGE_SIZE_DEFAULT <= LIST_PAGE_SIZE_MAX);
const _: () = assert!(ISSUE_ENCODED_BYTES_MAX * 2 < MESSAGE_BYTES_MAX);
const _: () = assert!(
    // Validation refuses control characters, so JSON escapes at most
    // doubles a field ('"' and '\\' take two bytes).
    2 * CHECK_ENCODED_BYTES_MAX * CHECK_BATCH_MAX_CEILING < LOG_ENTRY_BYTES_MAX
);
const _: () = assert!(2 * ISSUE_ENCODED_BYTES_MAX * WRITES_PER_ENTRY_MAX < LOG_ENTRY_BYTES_MAX);
// A revoke command is smaller than an issue's (id, reason, actor, time).
const _: () = assert!(REVOKE_REASON_BYTES_MAX + SUBJECT_BYTES_MAX + 1024 < ISSUE_ENCODED_BYTES_MAX);
const _: () = assert!(LOG_ENTRY_BYTES_MAX < PEER_MESSAGE_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES < PEER_MESSAGE_BYTES_MAX);
const _: () = assert!(2 * AUDIT_FETCH_BYTES_MAX < PEER_MESSAGE_BYTES_MAX);

/// Bytes of one snapshot received from a leader (written to disk as it
/// arrives; the leader announces the length first).
pub const SNAPSHOT_BYTES_MAX: usize = 64 * 1024 * 1024 * 1024;
/// Bytes of one key or value in snapshot data: a length prefix above it is
/// damage, refused before anything is allocated. No value is larger than
/// the log entry that wrote it.
pub const SNAPSHOT_VALUE_BYTES_MAX: usize = LOG_ENTRY_BYTES_MAX;

/// Audit entries in one GetEntries page.
pub const AUDIT_PAGE_MAX: u32 = 1000;
/// Audit entries in one GetEntries page when the request says 0.
pub const AUDIT_PAGE_DEFAULT: u32 = 100;
/// Bytes of export data per streamed chunk.
pub const EXPORT_CHUNK_BYTES: usize = 256 * 1024;

/// Bytes of entries in one GetEntries page (about; at least one entry).
pub const AUDIT_PAGE_BYTES_MAX: usize = 512 * 1024;
const _: () = assert!(AUDIT_PAGE_DEFAULT <= AUDIT_PAGE_MAX);
// A page stops before it passes AUDIT_PAGE_BYTES_MAX, and one entry alone
// fits a message: the largest is a policy change (its text JSON-escaped).
const _: () = assert!(AUDIT_PAGE_BYTES_MAX < MESSAGE_BYTES_MAX);
const _: () =
    assert!(2 * (POLICY_TEXT_BYTES_MAX + SCHEMA_TEXT_BYTES_MAX) + 64 * 1024 < MESSAGE_BYTES_MAX);
const _: () = assert!(EXPORT_CHUNK_BYTES < MESSAGE_BYTES_MAX);

/// Most SPIFFE ID patterns in a role mapping (config file or replicated).
pub const ROLE_PATTERNS_MAX: usize = 1024;
/// Largest replicated role mapping, as canonical JSON (it is also the
/// detail of its audit entry).
pub const ROLES_JSON_BYTES_MAX: usize = 256 * 1024;
/// Watch streams open on one node at once; beyond it Watch answers
/// ResourceExhausted.
pub const WATCHERS_MAX: usize = 1024;
/// Events in one Watch message.
pub const WATCH_EVENTS_PER_MESSAGE_MAX: usize = 512;
/// Watch messages queued for one slow watcher before its stream waits
/// (events are read from storage as it catches up, not held in memory).
pub const WATCH_QUEUE_MESSAGES: usize = 4;
/// How often a watch stream sends a progress mark confirmed by a read
/// index through the leader.
pub const WATCH_CONFIRM_INTERVAL_MS: u64 = 1000;
// An event: a task id, a grant id, a hash, four integers and framing.
const _: () = assert!(WATCH_EVENTS_PER_MESSAGE_MAX * (TASK_ID_BYTES_MAX + 128) < MESSAGE_BYTES_MAX);

// Request-time policy: the limits live beside the Cedar code (grantctl
// validates offline with them too); docs/limits.md lists them.
pub use grant_policy::{
    CHECK_ATTRIBUTES_MAX, CHECK_ATTRIBUTE_NAME_BYTES_MAX, CHECK_ATTRIBUTE_VALUE_BYTES_MAX,
    POLICIES_MAX, POLICY_ID_BYTES_MAX, POLICY_TEXT_BYTES_MAX, SCHEMA_TEXT_BYTES_MAX,
};
const _: () = assert!(2 * (POLICY_TEXT_BYTES_MAX + SCHEMA_TEXT_BYTES_MAX) < MESSAGE_BYTES_MAX);

/// A JWT bearer token presented instead of a client certificate.
pub const BEARER_TOKEN_BYTES_MAX: usize = 16 * 1024;
/// Bytes of audit entries appended to the audit store at a time while a
/// backup (which carries the chain's entries) is loaded. The state's
/// pairs are inserted key by key (`StateMachine::load`).
pub const SNAPSHOT_LOAD_BATCH_BYTES: usize = 256 * 1024;
/// Audit entries per segment file of the audit store
/// (`storage::audit_store`): a segment is the unit a prune removes (about
/// 6 MB of entries of 400 bytes). A multiple of the tile width (256), so
/// segment and tile boundaries meet.
pub const AUDIT_SEGMENT_ENTRIES: u64 = 16_384;
/// sled's page cache for the state (`cache_capacity`; sled's default is 1
/// GiB): most of a loaded node's resident memory at a million grants
/// (bench/README.md, "At size").
pub const STATE_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// How often the audit store's files are synced (fdatasync), on a thread
/// of their own: more often than sled writes the state out (500 ms), so
/// that the audit entries reach the disk before the state that counts
/// them (docs/storage.md, "The audit chain").
pub const AUDIT_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// How far behind the chain's head a checkpoint may be when it is applied,
/// in entries: one further back is refused. A snapshot carries the tile
/// hashes of this many entries below its head (`AuditFiles::tail`), so
/// that a node begun from it computes every root a checkpoint may name,
/// as every other replica does. The publisher signs the head it reads and
/// proposes it at once, so this is seconds of traffic at full load.
pub const CHECKPOINT_LAG_MAX: u64 = 8192;
/// Entries a node asks a peer for at a time while it fetches the part of
/// the chain it began without (`audit_fill`).
pub const AUDIT_FETCH_ENTRIES: u32 = 4096;
/// Bytes of entries one answer to such a fetch carries at most (it stops
/// short, and the node asks again from there).
pub const AUDIT_FETCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long one fetch of entries from a peer may take.
pub const AUDIT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause before a node tries again to fetch what it lacks, after a peer
/// failed it, and how often it looks whether it lacks anything.
pub const AUDIT_FETCH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long opening a sled database waits for its file lock: sled lets go
/// of a closed database's lock only when its I/O threads finish with it
/// (a snapshot install reopens the database it just loaded; tests reopen
/// what they closed). Beyond it, the open fails naming the path.
pub const DB_LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Refused calls (audit::refusals, docs/audit-format.md "Refused calls"):
/// recorded one by one up to this many per caller per window on a node...
pub const REFUSALS_PER_CALLER: u32 = 10;
/// ...and this many in all per window on a node; beyond either, counted
/// per caller and method into one aggregate entry when the window closes.
pub const REFUSALS_PER_WINDOW: u32 = 1000;
/// (caller, method) aggregates a node keeps per window; refusals beyond go
/// into one aggregate for all other callers (`*`).
pub const REFUSAL_AGGREGATES_MAX: usize = 1024;
/// Refusals waiting on a node to be handed on; beyond, counted into the
/// aggregates.
pub const REFUSAL_QUEUE_MAX: usize = 4096;
/// Refusals in one `Refusals` log command.
pub const REFUSAL_BATCH_MAX: usize = 256;
/// How often a node hands on its refusals (the leader proposes them).
pub const REFUSAL_FLUSH_MS: u64 = 250;
/// Bytes kept of each field of a refusal (caller, method, target, code);
/// the message keeps four times as many. Longer ones are cut.
pub const REFUSAL_FIELD_BYTES_MAX: usize = 256;
/// How long a refused request's body is waited for, to read its target.
pub const REFUSAL_BODY_WAIT_MS: u64 = 1000;

/// Most members a cluster may name at once (Initialize, ChangeMembership,
/// a restore's members), and most voters.
pub const MEMBERS_MAX: usize = 9;
/// Highest `check_batch_max` a configuration may set (the log entry size
/// limit is checked against it at compile time, above).
pub const CHECK_BATCH_MAX_CEILING: usize = 1024;
/// Most token verification keys a node keeps decoded; beyond it the cache
/// starts over.
pub const KEY_CACHE_MAX: usize = 1024;
/// Longest snapshot metadata (last log id and membership) a reader of a
/// snapshot file accepts.
pub const SNAPSHOT_META_BYTES_MAX: usize = 1024 * 1024;
/// How often a node re-evaluates the status the gRPC health service
/// reports.
pub const HEALTH_POLL_MS: u64 = 200;
