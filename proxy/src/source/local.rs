//! Local plugin files (`path:`): read at most once per fetch of a configuration however many
//! plugins name the same file, and not read at all when the file is unchanged since an
//! earlier fetch in this process hashed it.
//!
//! "Unchanged" is the file's stamp: size, inode, device, modification and change times. A
//! file modified shortly before it was hashed could be rewritten within the file system's
//! timestamp granularity without its stamp changing, so its digest is not remembered (the
//! next fetch reads it again); see [`RACY`].

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::wasm::engine::hex;

/// How long before its hashing a file must have last changed for its digest to be
/// remembered (the coarsest timestamp granularity of common file systems, with margin).
pub const RACY: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    dev: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            ino: meta.ino(),
            dev: meta.dev(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file last changed at least [`RACY`] before `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let latest = self.mtime.max(self.ctime);
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let changed = Duration::new(
            latest.0.max(0) as u64,
            latest.1.clamp(0, 999_999_999) as u32,
        );
        changed + RACY <= now
    }
}

/// A local file's content as one fetch sees it.
#[derive(Debug, Clone)]
pub struct Local {
    /// The bytes, or `None` when the file is unchanged since an earlier fetch hashed it (read
    /// them with [`read_checked`] if they are needed).
    pub bytes: Option<Arc<[u8]>>,
    /// Their sha256, lower-case hex.
    pub sha256: String,
}

/// The digests of the files hashed so far, by path.
#[derive(Debug, Default)]
pub struct Digests {
    map: Mutex<HashMap<PathBuf, (Stamp, String)>>,
}

impl Digests {
    /// The process's.
    pub fn global() -> &'static Digests {
        static DIGESTS: OnceLock<Digests> = OnceLock::new();
        DIGESTS.get_or_init(Digests::default)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, String)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's sha256 if it is unchanged since it was hashed; otherwise its bytes and
    /// sha256 (the digest is then remembered if the file is settled and did not change while
    /// it was read).
    pub fn fetch(&self, path: &Path) -> std::io::Result<Local> {
        self.fetch_at(path, SystemTime::now())
    }

    fn fetch_at(&self, path: &Path, now: SystemTime) -> std::io::Result<Local> {
        let before = Stamp::of(&std::fs::metadata(path)?);
        if let Some((stamp, sha256)) = self.map().get(path) {
            if *stamp == before {
                return Ok(Local {
                    bytes: None,
                    sha256: sha256.clone(),
                });
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(path)?.into();
        let sha256 = hex(&Sha256::digest(&bytes));
        let after = Stamp::of(&std::fs::metadata(path)?);
        if before == after && after.settled(now) {
            self.map()
                .insert(path.to_path_buf(), (after, sha256.clone()));
        }
        Ok(Local {
            bytes: Some(bytes),
            sha256,
        })
    }

    /// Forgets the digests of files not in `keep` (the paths of the configuration just
    /// fetched).
    pub fn retain(&self, keep: &[&Path]) {
        self.map().retain(|path, _| keep.contains(&path.as_path()));
    }
}

/// Reads the file and checks that its sha256 is still `sha256` (the file may have changed
/// since it was fetched).
pub fn read_checked(path: &Path, sha256: &str) -> Result<Arc<[u8]>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != sha256 {
        return Err(format!(
            "{} changed while the configuration was loading (sha256 {actual}, fetched as \
             {sha256}); reload again",
            path.display()
        ));
    }
    Ok(bytes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("sluice-local-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Later than any file of the test changed: every file is settled.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(60)
    }

    #[test]
    fn an_unchanged_settled_file_is_not_read_again() {
        let d = Digests::default();
        let dir = Dir::new("settled");
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"first").unwrap();
        let a = d.fetch_at(&path, later()).unwrap();
        assert_eq!(a.bytes.as_deref(), Some(&b"first"[..]));
        let b = d.fetch_at(&path, later()).unwrap();
        assert!(b.bytes.is_none(), "the digest was remembered");
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(&*read_checked(&path, &b.sha256).unwrap(), b"first");
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let d = Digests::default();
        let dir = Dir::new("changed");
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"first").unwrap();
        let a = d.fetch_at(&path, later()).unwrap();
        // Same size, a different content (a new file renamed over the old one, as deploys do).
        let next = dir.path().join("a.wasm.new");
        std::fs::write(&next, b"secnd").unwrap();
        std::fs::rename(&next, &path).unwrap();
        let b = d.fetch_at(&path, later()).unwrap();
        assert_eq!(b.bytes.as_deref(), Some(&b"secnd"[..]));
        assert_ne!(a.sha256, b.sha256);
        let e = read_checked(&path, &a.sha256).unwrap_err();
        assert!(
            e.contains("changed while the configuration was loading"),
            "{e}"
        );
    }

    #[test]
    fn a_recently_modified_file_is_always_read() {
        let d = Digests::default();
        let dir = Dir::new("recent");
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"fresh").unwrap();
        assert!(d.fetch(&path).unwrap().bytes.is_some());
        assert!(
            d.fetch(&path).unwrap().bytes.is_some(),
            "a file changed within RACY of its hashing is not trusted by its stamp"
        );
    }

    #[test]
    fn forgotten_paths_are_read_again() {
        let d = Digests::default();
        let dir = Dir::new("forgotten");
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"x").unwrap();
        d.fetch_at(&path, later()).unwrap();
        assert!(d.fetch_at(&path, later()).unwrap().bytes.is_none());
        d.retain(&[]);
        assert!(d.fetch_at(&path, later()).unwrap().bytes.is_some());
    }
}
