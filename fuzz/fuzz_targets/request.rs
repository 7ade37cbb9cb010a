//! Request validation: SPIFFE IDs, request ids, names, texts, grant ids,
//! role patterns, members, scopes, and role mappings in TOML.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| grantd::fuzzing::request(data));
