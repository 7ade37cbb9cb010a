//! The backup file `grantctl snapshot save` writes and `grantd restore`
//! reads: one header line naming the format, one JSON line describing the
//! snapshot, then the data: the snapshot exactly as Raft ships it between
//! nodes (the state machine's key/value pairs, the audit chain's head),
//! followed by every entry of the audit chain up to that head, as more
//! pairs.
//!
//! ```text
//! grant-ledger-backup 1\n
//! {"state_format":2,"data_bytes":N,"data_sha256":"…",…}\n
//! <N bytes>
//! ```
//!
//! The SHA-256 of the data is checked on save and on restore, so a file cut
//! short or altered is refused before anything is written. Backups are as
//! large as the state, so they are read as streams ([`read_header`],
//! [`check_data`]).

use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &str = "grant-ledger-backup 1";
/// Longest description line a reader accepts.
pub const HEADER_BYTES_MAX: usize = 1024 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    /// The state format version of the data (the server's FORMAT_VERSION).
    pub state_format: u32,
    /// Leader time when the snapshot was taken (ms since the Unix epoch).
    pub created_ms: i64,
    /// The node that served the snapshot.
    pub taken_from_node: u64,
    /// The last Raft log index the snapshot includes.
    pub last_log_index: u64,
    /// Audit chain size in the snapshot.
    pub audit_size: u64,
    pub data_bytes: u64,
    /// Hex SHA-256 of the data.
    pub data_sha256: String,
    /// The snapshot's Raft metadata (last log id, membership) in the
    /// server's own encoding; opaque here.
    pub raft_meta: serde_json::Value,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackupError {
    #[error("not a grant-ledger backup (first line is not {MAGIC:?})")]
    NotABackup,
    #[error("backup description unreadable: {0}")]
    BadHeader(String),
    #[error("backup data is {got} bytes, the description says {want}")]
    Truncated { got: u64, want: u64 },
    #[error("backup data does not match its SHA-256: the file was altered or damaged")]
    Checksum,
    #[error("reading the backup: {0}")]
    Io(String),
}

fn io(e: std::io::Error) -> BackupError {
    BackupError::Io(e.to_string())
}

/// The bytes before the data: magic line and description line.
pub fn header_bytes(h: &BackupHeader) -> Vec<u8> {
    let mut out = format!("{MAGIC}\n").into_bytes();
    out.extend_from_slice(&serde_json::to_vec(h).expect("header serializes"));
    out.push(b'\n');
    out
}

/// Read the magic and description lines at the start of a backup, leaving
/// `r` at the first byte of the data.
pub fn read_header(r: &mut impl BufRead) -> Result<BackupHeader, BackupError> {
    let mut magic = Vec::new();
    r.by_ref()
        .take(MAGIC.len() as u64 + 1)
        .read_until(b'\n', &mut magic)
        .map_err(io)?;
    if magic != format!("{MAGIC}\n").as_bytes() {
        return Err(BackupError::NotABackup);
    }
    let mut line = Vec::new();
    r.by_ref()
        .take(HEADER_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    if line.pop() != Some(b'\n') {
        return Err(BackupError::BadHeader("no end of line".into()));
    }
    serde_json::from_slice(&line).map_err(|e| BackupError::BadHeader(e.to_string()))
}

/// Read the data after the header to the end of `r`, checking its length
/// and SHA-256 against the description.
pub fn check_data(r: impl Read, h: &BackupHeader) -> Result<(), BackupError> {
    let mut r = Hashing::new(r);
    std::io::copy(&mut r, &mut std::io::sink()).map_err(io)?;
    let (got, sha) = r.finish();
    if got != h.data_bytes {
        return Err(BackupError::Truncated {
            got,
            want: h.data_bytes,
        });
    }
    if sha != h.data_sha256 {
        return Err(BackupError::Checksum);
    }
    Ok(())
}

/// A reader that hashes (SHA-256) and counts what passes through it.
pub struct Hashing<R> {
    r: R,
    h: Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(r: R) -> Self {
        Hashing {
            r,
            h: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far and the hex SHA-256 of them.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.h.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.h.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Split and check a whole backup file held in memory: its description and
/// its data.
pub fn parse(file: &[u8]) -> Result<(BackupHeader, &[u8]), BackupError> {
    let mut data = file;
    let h = read_header(&mut data)?;
    check_data(data, &h)?;
    Ok((h, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn file(data: &[u8]) -> Vec<u8> {
        let h = BackupHeader {
            state_format: 2,
            created_ms: 1,
            taken_from_node: 1,
            last_log_index: 9,
            audit_size: 4,
            data_bytes: data.len() as u64,
            data_sha256: sha256_hex(data),
            raft_meta: serde_json::json!({"x": 1}),
        };
        let mut f = header_bytes(&h);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let f = file(b"some state");
        let (h, d) = parse(&f).unwrap();
        assert_eq!(d, b"some state");
        assert_eq!(h.last_log_index, 9);
        assert_eq!(parse(b"hello\n").unwrap_err(), BackupError::NotABackup);
        assert!(matches!(
            parse(&f[..f.len() - 1]).unwrap_err(),
            BackupError::Truncated { .. }
        ));
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad).unwrap_err(), BackupError::Checksum);
        let mut bad = f.clone();
        bad[MAGIC.len() + 2] = b'#';
        assert!(matches!(
            parse(&bad).unwrap_err(),
            BackupError::BadHeader(_)
        ));
    }
}
