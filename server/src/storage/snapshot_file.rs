//! Snapshots live on disk, never whole in memory: a snapshot file is
//! `[u32 meta length][meta][data]` (data as in `snapshot_data`). It is
//! written under a temporary name in the snapshot directory, fsynced, and
//! renamed to `current.snap` once it is the snapshot in force.
//!
//! A [`SnapshotFile`] is the snapshot data openraft passes around. It holds
//! the file open and reads it by position, so a newer snapshot renamed over
//! `current.snap` does not change what a sender or a backup is reading, and
//! several readers of one handle do not disturb each other.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;

use super::sync_dir;
use crate::raft::codec;
use crate::raft::typ::SnapshotMeta;

/// The name of the snapshot in force, in the snapshot directory.
pub const CURRENT: &str = "current.snap";
/// Files being written or received end in this; a start removes leftovers.
const PARTIAL_SUFFIX: &str = ".partial";

/// What `r` reads, in chunks of `chunk` bytes (the last one shorter),
/// read off the async runtime.
pub fn read_chunks<R: Read + Send + 'static>(
    r: R,
    chunk: usize,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    futures::stream::try_unfold(r, move |r| async move {
        let (r, buf) = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(chunk);
            let mut r = r.take(chunk as u64);
            r.read_to_end(&mut buf).map(|_| (r.into_inner(), buf))
        })
        .await
        .map_err(super::io_err)??;
        Ok((!buf.is_empty()).then_some((buf, r)))
    })
}

/// One snapshot file, open for reading.
pub struct SnapshotFile {
    file: Arc<File>,
    path: PathBuf,
    data_start: u64,
    data_len: u64,
    /// Still under its temporary name: removed when dropped unpublished.
    partial: bool,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SnapshotFile({}, {} bytes)",
            self.path.display(),
            self.data_len
        )
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.partial {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SnapshotFile {
    /// The snapshot in force in `dir`, if there is one.
    pub fn open_current(dir: &Path) -> io::Result<Option<(SnapshotMeta, SnapshotFile)>> {
        let path = dir.join(CURRENT);
        match File::open(&path) {
            Ok(f) => Self::read_header(f, path, false).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_header(f: File, path: PathBuf, partial: bool) -> io::Result<(SnapshotMeta, Self)> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot file {}: {what}", path.display()),
            )
        };
        let total = f.metadata()?.len();
        let mut len = [0u8; 4];
        f.read_exact_at(&mut len, 0).map_err(|_| bad("cut short"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > crate::limits::SNAPSHOT_META_BYTES_MAX || 4 + len as u64 > total {
            return Err(bad("metadata length out of range"));
        }
        let mut m = vec![0; len];
        f.read_exact_at(&mut m, 4)?;
        let meta: SnapshotMeta = codec::decode(&m).map_err(|e| bad(&e.to_string()))?;
        let data_start = 4 + len as u64;
        let file = SnapshotFile {
            file: Arc::new(f),
            path,
            data_start,
            data_len: total - data_start,
            partial,
        };
        Ok((meta, file))
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The data, from its first byte, as a buffered reader of its own.
    pub fn data(&self) -> io::BufReader<DataReader> {
        io::BufReader::with_capacity(
            256 * 1024,
            DataReader {
                file: self.file.clone(),
                pos: self.data_start,
                end: self.data_start + self.data_len,
            },
        )
    }

    /// The data in chunks of `chunk` bytes, read off the async runtime.
    pub fn chunks(&self, chunk: usize) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
        read_chunks(
            DataReader {
                file: self.file.clone(),
                pos: self.data_start,
                end: self.data_start + self.data_len,
            },
            chunk,
        )
    }

    /// Make this the snapshot in force in `dir` (renamed to `current.snap`,
    /// replacing the one before). Already in force: nothing to do.
    pub fn publish(&mut self, dir: &Path) -> io::Result<()> {
        let target = dir.join(CURRENT);
        if self.path == target {
            return Ok(());
        }
        std::fs::rename(&self.path, &target)?;
        sync_dir(dir)?;
        self.path = target;
        self.partial = false;
        Ok(())
    }
}

/// Reads a byte range of a shared file by position.
pub struct DataReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for DataReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot file shorter than its length",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A snapshot file being written: the metadata first, then the data.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    path: PathBuf,
    finished: bool,
}

impl SnapshotWriter {
    /// Start a new snapshot file in `dir` under a temporary name of its own.
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("snap-{n}{PARTIAL_SUFFIX}"));
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(&path)?);
        let m = codec::encode(meta);
        out.write_all(&(m.len() as u32).to_be_bytes())?;
        out.write_all(&m)?;
        Ok(SnapshotWriter {
            out,
            path,
            finished: false,
        })
    }

    /// Written to disk and fsynced; open for reading, still unpublished.
    pub fn finish(mut self) -> io::Result<(SnapshotMeta, SnapshotFile)> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        self.finished = true;
        SnapshotFile::read_header(File::open(&self.path)?, self.path.clone(), true)
    }

    /// Remove what earlier runs left half written in `dir`.
    pub fn remove_leftovers(dir: &Path) -> io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(PARTIAL_SUFFIX) || name.ends_with(".tmp") {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<crate::raft::TypeConfig>(
                1, 1, index,
            )),
            last_membership: Default::default(),
        }
    }

    #[tokio::test]
    async fn written_published_and_read_while_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), &meta(7)).unwrap();
        w.write_all(b"first data").unwrap();
        let (m, mut first) = w.finish().unwrap();
        assert_eq!(m, meta(7));
        first.publish(dir.path()).unwrap();

        // A newer snapshot replaces it while the first is still being read.
        let mut w = SnapshotWriter::create(dir.path(), &meta(9)).unwrap();
        w.write_all(b"second").unwrap();
        let (_, mut second) = w.finish().unwrap();
        second.publish(dir.path()).unwrap();

        let mut got = Vec::new();
        first.data().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"first data");
        let chunks: Vec<Vec<u8>> = first.chunks(3).try_collect().await.unwrap();
        assert_eq!(chunks.concat(), b"first data");
        assert_eq!(chunks.len(), 4);

        let (m, cur) = SnapshotFile::open_current(dir.path()).unwrap().unwrap();
        assert_eq!(m, meta(9));
        assert_eq!(cur.data_len(), 6);
    }

    #[test]
    fn unfinished_and_unpublished_files_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), &meta(1)).unwrap();
        w.write_all(b"abandoned").unwrap();
        drop(w);
        let w = SnapshotWriter::create(dir.path(), &meta(2)).unwrap();
        let (_, f) = w.finish().unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(SnapshotFile::open_current(dir.path()).unwrap().is_none());
    }
}
