//! Changes to one file's directory entry, as they happen: inotify on the
//! directory the file is in, filtered to its name (pidwatch's pidfile).
//!
//! The directory is watched, not the file: psflip writes its pidfile by renaming
//! a temp file over it (a new inode each time) and removes it when it stops, and
//! a watch on a file does not survive either. Watching a directory takes read
//! permission on it, nothing more; it need not be ours. The path is resolved as
//! reading the file resolves it (symlinks in the directory part are followed);
//! if the file itself is a symlink, only changes to the link are seen, not to
//! what it points to.
//!
//! A watch can be lost (the directory removed, renamed or unmounted): it is then
//! dropped, and [`FileWatch::arm`] adds it again once the path names a directory.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::EffectError;

/// What happened to the file's entry since the last [`FileWatch::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// It was created, renamed onto, or closed after writing: it may name
    /// something new. Also set when the kernel dropped events (its queue
    /// overflowed): a write may have been among them.
    pub written: bool,
}

pub struct FileWatch {
    inotify: Inotify,
    dir: PathBuf,
    name: OsString,
    wd: Option<WatchDescriptor>,
}

/// The events on the file's name that matter.
fn on_name() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
}

fn written() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE
}

/// Events on the directory itself after which the watch no longer covers the
/// path (IN_IGNORED: the kernel removed the watch).
fn lost() -> AddWatchFlags {
    AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_UNMOUNT
        | AddWatchFlags::IN_IGNORED
}

impl FileWatch {
    /// An inotify instance for `path`'s directory, not yet watching it (see
    /// [`FileWatch::arm`]).
    pub fn new(path: &Path) -> Result<FileWatch, EffectError> {
        let name = path.file_name().ok_or_else(|| {
            EffectError::io(
                format!("{}: names no file", path.display()),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| EffectError::sys("inotify_init1", e))?;
        Ok(FileWatch {
            inotify,
            dir,
            name: name.to_os_string(),
            wd: None,
        })
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory is being watched.
    pub fn armed(&self) -> bool {
        self.wd.is_some()
    }

    /// Watch the directory, if not already.
    pub fn arm(&mut self) -> Result<(), EffectError> {
        if self.wd.is_none() {
            let wd = self
                .inotify
                .add_watch(&self.dir, on_name() | AddWatchFlags::IN_ONLYDIR)
                .map_err(|e| EffectError::sys(format!("watching {}", self.dir.display()), e))?;
            self.wd = Some(wd);
        }
        Ok(())
    }

    /// Read every queued event; what happened to the file's entry, if anything.
    /// A lost watch is dropped (and counts as a change: the path may name another
    /// directory now). Fails only if the instance itself cannot be read.
    pub fn drain(&mut self) -> Result<Option<Change>, EffectError> {
        let mut change: Option<Change> = None;
        let mut note = |written: bool| {
            let c = change.get_or_insert(Change { written: false });
            c.written |= written;
        };
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(EffectError::sys("reading inotify events", e)),
            };
            if events.is_empty() {
                break;
            }
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    note(true);
                    continue;
                }
                if Some(event.wd) != self.wd {
                    continue; // a watch dropped earlier
                }
                if event.mask.intersects(lost()) {
                    if !event.mask.contains(AddWatchFlags::IN_IGNORED) {
                        let _ = self.inotify.rm_watch(event.wd);
                    }
                    self.wd = None;
                    note(false);
                } else if event.name.as_deref() == Some(self.name.as_os_str())
                    && event.mask.intersects(on_name())
                {
                    note(event.mask.intersects(written()));
                }
            }
        }
        Ok(change)
    }
}

impl AsFd for FileWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("psflip-filewatch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A rename onto the file (psflip's way of writing it) is a write, its
    /// removal a change that is not; other names in the directory are no change.
    #[test]
    fn sees_the_file_written_by_rename_and_removed_and_nothing_else() {
        let dir = scratch("rename");
        let path = dir.join("x.pid");
        let mut w = FileWatch::new(&path).unwrap();
        w.arm().unwrap();
        assert_eq!(w.drain().unwrap(), None);
        std::fs::write(dir.join("other"), "1\n").unwrap();
        std::fs::write(dir.join(".x.pid.tmp"), "42\n").unwrap();
        assert_eq!(w.drain().unwrap(), None, "other names are no change");
        std::fs::rename(dir.join(".x.pid.tmp"), &path).unwrap();
        assert_eq!(w.drain().unwrap(), Some(Change { written: true }));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.drain().unwrap(), Some(Change { written: false }));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(w.drain().unwrap(), Some(Change { written: false }));
        assert!(!w.armed(), "the watch went with its directory");
        assert!(w.arm().is_err(), "no directory to watch");
    }

    #[test]
    fn a_missing_directory_cannot_be_armed_until_it_exists() {
        let dir = scratch("missing").join("later");
        let mut w = FileWatch::new(&dir.join("x.pid")).unwrap();
        assert!(w.arm().is_err());
        std::fs::create_dir(&dir).unwrap();
        w.arm().unwrap();
        std::fs::write(dir.join("x.pid"), "7\n").unwrap();
        assert_eq!(w.drain().unwrap(), Some(Change { written: true }));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
