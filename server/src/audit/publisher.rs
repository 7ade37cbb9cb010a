//! The leader's checkpoint publisher: while this node leads, it makes sure
//! its signing keys are in the roster, then every `checkpoint_interval_ms`
//! signs the current tree head (if it grew) as a C2SP checkpoint and
//! commits it through Raft, so every replica holds the same signed
//! checkpoints.

use std::time::Duration;

use grant_proto::audit::note::{self, Checkpoint};
use tokio::sync::watch;

use super::keys::{NodeKey, SharedKey};
use crate::api::errors::ApiError;
use crate::api::{now_ms, NodeContext};
use crate::ledger::{CheckpointCmd, Command, CommandResult, RegisterKeyCmd};

pub async fn run(ctx: NodeContext, key: SharedKey, shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.checkpoint_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tick.tick().await;
        if !ctx.raft.is_leader() {
            continue;
        }
        // Read each round: the key may have been rotated.
        let key = super::keys::current(&key);
        if let Err(e) = publish_once(&ctx, &key).await {
            tracing::debug!(error = %e, "checkpoint not published");
        }
    }
}

/// Make sure this node's checkpoint key is in the roster and its token key
/// published, committing a registration if not: nothing it signs can be
/// verified by the others before that. Called by the publisher and before
/// a node hands out its first token.
pub async fn ensure_registered(ctx: &NodeContext, key: &NodeKey) -> Result<(), ApiError> {
    let vkey = key.verifier().encode();
    let roster = ctx.state.roster()?;
    let in_roster = roster
        .iter()
        .any(|(name, k)| name == &key.name && *k == vkey);
    let token_published = ctx.state.token_key(&key.token.kid)?.is_some();
    if in_roster && token_published {
        return Ok(());
    }
    let cmd = Command::RegisterKey(RegisterKeyCmd {
        node_id: ctx.config.node_id,
        verifier_key: vkey.clone(),
        token_kid: key.token.kid.clone(),
        token_x: key.token.x.clone(),
        now_ms: now_ms(),
    });
    match ctx.propose(cmd).await? {
        (CommandResult::KeyRegistered { .. }, _) => {
            tracing::info!(key = %vkey, token_kid = %key.token.kid, "signing keys recorded in the roster");
            Ok(())
        }
        (other, _) => {
            // Refused by the ledger: nothing can be signed until this is fixed.
            tracing::warn!(result = ?other, "signing key refused by the roster");
            Err(ApiError::Internal(format!("key registration: {other:?}")))
        }
    }
}

async fn publish_once(ctx: &NodeContext, key: &NodeKey) -> Result<(), String> {
    ensure_registered(ctx, key)
        .await
        .map_err(|e| e.to_string())?;
    let chain = ctx.state.chain().map_err(|e| e.to_string())?;
    let latest = ctx
        .state
        .latest_checkpoint()
        .map_err(|e| e.to_string())?
        .map(|c| c.0)
        .unwrap_or(0);
    if chain.size() <= latest {
        return Ok(());
    }
    let cp = Checkpoint {
        origin: ctx.config.audit_origin.clone(),
        size: chain.size(),
        root: chain.root(),
        time_ms: now_ms(),
    };
    let text = note::sign(&cp, &key.name, &key.signing);
    match ctx
        .propose(Command::Checkpoint(CheckpointCmd { note: text }))
        .await
        .map_err(|e| e.to_string())?
    {
        (CommandResult::Checkpointed { size }, _) => {
            tracing::debug!(size, "checkpoint committed");
            Ok(())
        }
        (other, _) => {
            tracing::warn!(result = ?other, "signed checkpoint refused");
            Err(format!("checkpoint: {other:?}"))
        }
    }
}
