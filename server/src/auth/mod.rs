//! Access control (issue #4, in progress): who may call what.
//!
//! This part is the policy: SPIFFE ID patterns, the roles of DESIGN.md and
//! which role each RPC needs. It is not wired to the listeners yet: the
//! caller's identity comes from its mTLS certificate (or a JWT), which the
//! transport work of issue #4 adds; until then every caller is let in, as
//! docs/operations.md says.

pub mod roles;
