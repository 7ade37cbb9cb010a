//! grantd: a grant-ledger node.
//!
//! Layers, top to bottom: `api` (validate, propose, map errors) → `raft`
//! (openraft types, peer network) → `storage` (durable log, state machine)
//! → `ledger` (pure rules). Arrows point down only.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod fuzzing;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod restore;
pub mod storage;
