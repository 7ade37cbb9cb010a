//! Encoding of openraft's messages and log entries, in one place so the
//! choice (JSON today: self-describing, and measured cheap next to an fsync)
//! can change without touching the network or storage code.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("openraft and ledger types always serialize")
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, std::io::Error> {
    serde_json::from_slice(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
