//! Access control: who is calling (`layer`: the SPIFFE ID of the client
//! certificate, or of a JWT bearer token (`bearer`), checked on every
//! request) and what each caller may do
//! (`roles`: SPIFFE ID patterns, the roles of DESIGN.md, and the role each
//! RPC needs). docs/security.md is the user's view.

pub mod bearer;
pub mod layer;
pub mod roles;
