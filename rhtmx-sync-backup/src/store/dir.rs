//! A store in a local directory: an object is a file at its name under the root.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_name, ObjectStore};
use crate::{Error, Result};

/// Objects as files under `root` (`root/snapshots/…/00000`). A put writes a temporary
/// file beside the target, syncs it and renames it over the target, so an object is
/// whole or absent even across a crash. Temporary files end in `.partial` and are not
/// listed.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store under `root`, made (with its parents) at the first put.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

#[async_trait]
impl ObjectStore for DirStore {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        let path = self.path(name)?;
        tokio::task::spawn_blocking(move || write_whole(&path, &body))
            .await
            .expect("the write does not panic")
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let path = self.path(name)?;
        match tokio::fs::read(&path).await {
            Ok(body) => Ok(Some(body.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut names = Vec::new();
            walk(&root, "", &mut names)?;
            names.retain(|n| n.starts_with(&prefix));
            names.sort();
            Ok(names)
        })
        .await
        .expect("the walk does not panic")
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(path)(e)),
            _ => {}
        }
        // Directories left empty go too, up to the root (one not empty stays).
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

fn write_whole(path: &Path, body: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("an object path has a parent");
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let partial = path.with_extension(format!("{}.partial", uuid::Uuid::now_v7().simple()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        Error::io(path)(e)
    })
}

fn walk(dir: &Path, prefix: &str, names: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let name = format!("{prefix}{file}");
        let kind = entry.file_type().map_err(Error::io(entry.path()))?;
        if kind.is_dir() {
            walk(&entry.path(), &format!("{name}/"), names)?;
        } else if !file.ends_with(".partial") {
            names.push(name);
        }
    }
    Ok(())
}
