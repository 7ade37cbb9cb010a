//! Which sled database holds the state machine: one database per
//! generation, so that installing a snapshot can end with a database that
//! holds nothing in memory.
//!
//! A node starts with the database `state/`. Installing a snapshot loads
//! it into a new database beside it (`state.1/`, `state.2/`, ...), closes
//! and reopens that database, and then switches the pointer file
//! `state.current` to it (written to a temporary name, fsynced, renamed,
//! directory fsynced). The switch is the commit point: a crash before it
//! leaves the old generation in force and a directory that the next start
//! removes. The old generation's directory is removed after the switch.
//!
//! Why not a fresh tree in the same database: sled 0.34 keeps every page of
//! a tree it has just loaded resident (about five times the snapshot's
//! bytes for millions of small keys), and dropping a tree does not give its
//! memory back; closing the database does (bench/HISTORY.md, "Streamed
//! snapshots").

use std::io;
use std::path::Path;

use super::{io_err, sync_dir};

/// The first generation's database, and the one a data directory without a
/// pointer file uses.
pub const FIRST: &str = "state";
const POINTER: &str = "state.current";
/// In each database, the meta tree's key naming the tree that holds the
/// state (older data directories switched trees within one database).
const ACTIVE_TREE: &[u8] = b"active_tree";

/// The generation in force in `dir`.
pub fn current(dir: &Path) -> io::Result<String> {
    match std::fs::read_to_string(dir.join(POINTER)) {
        Ok(s) => {
            let name = s.trim().to_string();
            if number(&name).is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} names {name:?}, not a state generation", POINTER),
                ));
            }
            if !dir.join(&name).is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{POINTER} names {name}, which is missing from {}",
                        dir.display()
                    ),
                ));
            }
            Ok(name)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FIRST.to_string()),
        Err(e) => Err(e),
    }
}

/// The generation after `name`.
pub fn next(name: &str) -> String {
    format!("state.{}", number(name).unwrap_or(0) + 1)
}

/// `state` is generation 0, `state.<n>` generation n; anything else is not
/// a generation.
/// The audit store of generation `name` (`storage::audit_store`): it
/// switches with the database, since it holds the chain that database's
/// head counts.
pub fn audit_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.audit"))
}

fn number(name: &str) -> Option<u64> {
    if name == FIRST {
        return Some(0);
    }
    name.strip_prefix("state.")?.parse().ok()
}

/// Open a generation's database and the tree holding its state (created
/// empty if the database is new).
pub fn open(dir: &Path, name: &str) -> io::Result<(sled::Db, sled::Tree)> {
    with_state_tree(super::open_db(&dir.join(name))?)
}

fn with_state_tree(db: sled::Db) -> io::Result<(sled::Db, sled::Tree)> {
    let meta = db.open_tree("meta").map_err(io_err)?;
    let tree_name = match meta.get(ACTIVE_TREE).map_err(io_err)? {
        Some(n) => n.to_vec(),
        None => {
            meta.insert(ACTIVE_TREE, b"state.0".to_vec())
                .map_err(io_err)?;
            b"state.0".to_vec()
        }
    };
    let tree = db.open_tree(tree_name).map_err(io_err)?;
    Ok((db, tree))
}

/// Put `name` in force: after this returns, a restart opens it.
pub fn switch_to(dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{POINTER}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, name.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(POINTER))?;
    sync_dir(dir)
}

/// Remove every generation's directories (database and audit store) but
/// `keep`'s (and a pointer file left half-written): what a crash or a
/// finished switch left behind.
pub fn remove_others(dir: &Path, keep: &str) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == format!("{POINTER}.tmp") {
            std::fs::remove_file(e.path())?;
        } else if e.file_type()?.is_dir() {
            let generation = name.strip_suffix(".audit").unwrap_or(name);
            if generation != keep && number(generation).is_some() {
                std::fs::remove_dir_all(e.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_without_a_pointer_uses_the_first_generation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(current(dir.path()).unwrap(), FIRST);
        assert_eq!(next(FIRST), "state.1");
        assert_eq!(next("state.41"), "state.42");
    }

    #[test]
    fn the_switch_is_what_a_restart_sees_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [FIRST, "state.1", "state.2"] {
            std::fs::create_dir(d.join(name)).unwrap();
        }
        std::fs::create_dir(d.join("snapshot")).unwrap();
        std::fs::write(d.join("state.current.tmp"), "state.").unwrap();
        switch_to(d, "state.1").unwrap();
        assert_eq!(current(d).unwrap(), "state.1");
        remove_others(d, "state.1").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["snapshot", "state.1", "state.current"]);
    }

    #[test]
    fn a_pointer_to_nothing_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(POINTER), "state.7").unwrap();
        let e = current(dir.path()).unwrap_err().to_string();
        assert!(e.contains("state.7"), "{e}");
        std::fs::write(dir.path().join(POINTER), "raft-log").unwrap();
        let e = current(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a state generation"), "{e}");
    }
}
