//! The pidfile: written atomically (a fresh temp file created exclusively in the
//! same directory, then renamed over the target, so a reader never sees it
//! half-written and a planted symlink is replaced, never followed), and removed only
//! while it still names us.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::EffectError;

/// Write `pid` and a newline to `path`, atomically.
pub fn write(path: &Path, pid: u32) -> Result<(), EffectError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pidfile".into());
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.{pid}.{attempt}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
                continue;
            }
            Err(e) => {
                return Err(EffectError::io(
                    format!("cannot create {}", tmp.display()),
                    e,
                ));
            }
        };
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
        return Ok(());
    }
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
