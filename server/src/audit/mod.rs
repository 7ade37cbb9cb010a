//! The signed audit chain on the server side: the chain state that apply
//! extends (`chain`), this node's signing key (`keys`), the leader's
//! checkpoint publisher (`publisher`), the fetch of the chain below a
//! snapshot a node began from (`fill`), and refused calls on their way into
//! the chain (`refusals`). The format itself (canonical bytes,
//! Merkle tree, signed notes, export, verifier) lives in
//! `grant_proto::audit`, so the server and the offline verifier share one
//! definition.

pub mod chain;
pub mod fill;
pub mod keys;
pub mod publisher;
pub mod refusals;
