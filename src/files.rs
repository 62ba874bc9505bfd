//! Private files and directories: directories only their owner can enter, secret files
//! created whole or not at all.

use std::fs;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Creates `path` (and its directory, 0700) with mode 0600 and fails with `AlreadyExists` if it
/// exists, even when another process creates it at the same moment. The contents are written to
/// a temporary file of this process, synced, linked into place (a link, unlike a rename, never
/// replaces an existing file) and the directory synced, so that a crash or power loss leaves
/// either no file or the whole file, never an empty one beside keys it was meant to open.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "refusing to overwrite an existing secret file",
        ));
    }
    let mut nonce = [0u8; 8];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| std::io::Error::other("no randomness for a temporary file name"))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.write_all(b"\n")?;
        f.sync_all()
    });
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        // A file system without hard links (some network and FAT mounts): rename, which closes
        // the same window except against a process creating the file at the very same moment.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
            fs::rename(&tmp, path)
        }
        other => other,
    });
    let _ = fs::remove_file(&tmp);
    linked?;
    #[cfg(unix)]
    fs::File::open(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })?
    .sync_all()?;
    Ok(())
}

/// Creates `dir` with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `path` for writing with mode 0600, refusing to replace an existing file (an export
/// of the audit trail, a backup).
pub fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_secret_file(&path, b"first").unwrap();
        let err = write_secret_file(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "first\n");
    }
}
