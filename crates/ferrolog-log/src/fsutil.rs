//! Small durable file-system helpers shared by segments and checkpoints.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::error::{IoContext, LogError};

/// Suffix of files being written atomically; leftovers are removed when a log opens.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Fsyncs a directory so that file creations, renames and deletions in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .context("open directory for fsync")?
        .sync_all()
        .context("fsync directory")
}

/// Replaces `dir/name` with `contents` so that a crash leaves either the old or the new file:
/// writes a temporary file, fsyncs it, renames it over the target and fsyncs the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), LogError> {
    let target = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = File::create(&temp).context("create temporary checkpoint file")?;
    file.write_all(contents)
        .context("write temporary checkpoint file")?;
    file.sync_all().context("fsync temporary checkpoint file")?;
    drop(file);
    std::fs::rename(&temp, &target).context("rename checkpoint file into place")?;
    sync_dir(dir)
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).context("remove file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp_file() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomically(dir.path(), "state", b"one")?;
        write_atomically(dir.path(), "state", b"two")?;
        assert_eq!(
            std::fs::read(dir.path().join("state")).expect("read"),
            b"two"
        );
        assert!(!dir.path().join("state.tmp").exists());
        remove_if_exists(&dir.path().join("state"))?;
        remove_if_exists(&dir.path().join("state"))?;
        Ok(())
    }
}
