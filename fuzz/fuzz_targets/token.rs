//! Token parsing: a presented grant token (signature check against the
//! cluster's key) and a bearer token (JWKS, issuer, audience, expiry).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| grantd::fuzzing::token(data));
