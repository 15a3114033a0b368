//! The pidfile: written atomically (a fresh temp file created exclusively in the
//! same directory, then renamed over the target, so a reader never sees it
//! half-written and a planted symlink is replaced, never followed), and removed only
//! while it still names us.
//!
//! The temp file's name carries 64 random bits: a pidfile often lives in a shared
//! directory (`/tmp`, `/var/run` group-writable), and a name others can predict
//! is a name they can pre-create, making every write fail (`File exists`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::EffectError;

/// How many fresh names to try before giving up (each taken one is a 2^-64
/// coincidence, or someone racing us with a copy of our random bytes).
const ATTEMPTS: u32 = 16;

/// 64 bits from the kernel's random source, as hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No getrandom (very old kernel): the clock's nanoseconds and our pid
        // still make a name nobody can pre-create in bulk.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dir_and_name(path: &Path) -> (&Path, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pidfile".into());
    (dir, name)
}

/// Create a fresh, unpredictably named temp file beside `path`, exclusively and
/// without following symlinks.
fn create_temp(path: &Path) -> Result<(std::fs::File, PathBuf), EffectError> {
    let (dir, name) = dir_and_name(path);
    let mut attempt = 0;
    loop {
        let tmp = dir.join(format!(".{name}.{}.tmp", random_hex()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        match file {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => {
                return Err(EffectError::io(
                    format!("cannot create {}", tmp.display()),
                    e,
                ));
            }
        }
    }
}

/// Write `pid` and a newline to `path`, atomically.
pub fn write(path: &Path, pid: u32) -> Result<(), EffectError> {
    let (mut file, tmp) = create_temp(path)?;
    let written = file
        .write_all(format!("{pid}\n").as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(EffectError::io(
            format!("cannot write {}", path.display()),
            e,
        ));
    }
    Ok(())
}

/// Whether [`write`] can work at `path`, asked before the first child starts:
/// the directory exists and takes a new file, and `path` is no directory. A
/// probe temp file is created and removed; the pidfile itself is not touched.
pub fn check_writable(path: &Path) -> Result<(), String> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.is_dir()
    {
        return Err(format!("{}: is a directory", path.display()));
    }
    let (dir, _) = dir_and_name(path);
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("{}: not a directory", dir.display()));
        }
        Ok(_) => {}
        Err(e) => return Err(format!("directory {}: {e}", dir.display())),
    }
    let (file, tmp) = create_temp(path).map_err(|e| e.to_string())?;
    drop(file);
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// The pid a pidfile names, if it holds one.
pub fn read(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

/// Remove `path` if it names `pid`; leave it alone otherwise (a successor owns it).
pub fn remove_if_ours(path: &Path, pid: u32) -> Result<(), EffectError> {
    if read(path) == Some(pid) {
        std::fs::remove_file(path)
            .map_err(|e| EffectError::io(format!("cannot remove {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_not_predictable() {
        let a = random_hex();
        let b = random_hex();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
