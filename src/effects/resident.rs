//! Give back the pages of read-only file mappings that start-up touched.
//!
//! An idle psflip runs a handful of functions (poll, a read of its signalfd),
//! but its start-up mapped much more: the kernel's fault-around maps 64 KiB of
//! a file around every page fault, so every function start-up ran left its
//! neighbourhood of psflip's and libc's text mapped, and all of it counts in the
//! process's RSS although it is page cache that every process shares. Once the
//! process has been quiet for a while ([`crate::runtime::SETTLE_AFTER`]) it
//! unmaps those pages with `MADV_DONTNEED`. For a private file mapping that
//! was never written this only drops page-table entries: the page cache keeps
//! the pages, and the next access maps them again (a minor fault). Pages that
//! may have been written — data, the relocated GOT, RELRO — are never touched:
//! only whole pages of loadable segments without write permission, which no
//! relocation of a position-independent program writes. The vDSO is skipped.

use std::ffi::c_void;

const PAGE: usize = 4096;

/// Unmap the whole pages of every loaded object's read-only segments (psflip,
/// libc, ld.so), each as the walk over them finds it; returns how much address
/// space that covered (not all of it was resident).
///
/// The code the walk runs after a range is released, and the event loop's,
/// comes back at once, 64 KiB around each page: about 0.3 MiB of psflip's
/// and libc's text that the next event (an upgrade's spawn above all) would
/// otherwise fault in on its path (0.2 ms on a cold upgrade's first phase,
/// measured; BENCHMARKS.md). [`release`] with [`text_ranges`] gives back
/// everything instead.
pub fn release_startup_pages() -> usize {
    walk(true).iter().map(|(_, len)| len).sum()
}

/// The whole pages of every loaded object's read-only segments, but the
/// vDSO's: (start, length).
pub fn text_ranges() -> Vec<(usize, usize)> {
    walk(false)
}

/// Walk the loaded objects' read-only segments; with `release`, release each
/// range as it is found.
fn walk(release: bool) -> Vec<(usize, usize)> {
    let mut walk = Walk {
        // SAFETY: getauxval has no preconditions.
        vdso: unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize,
        ranges: Vec::with_capacity(16),
        release,
    };
    // SAFETY: `each_object` only reads the headers it is handed, and with
    // `release` madvises read-only, never-written private file mappings (see
    // the module docs).
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&raw mut walk).cast::<c_void>());
    }
    walk.ranges
}

/// `MADV_DONTNEED` on `ranges` (from [`text_ranges`]), with nothing but the
/// system calls in between: code run after a release maps its pages back,
/// with the kernel's fault-around 64 KiB at a time.
pub fn release(ranges: &[(usize, usize)]) {
    for &(start, len) in ranges {
        // SAFETY: read-only, never-written private file mappings (see the
        // module docs); a failure (nothing mapped there) changes nothing.
        unsafe { libc::syscall(libc::SYS_madvise, start, len, libc::MADV_DONTNEED) };
    }
}

/// What `each_object` is handed: the vDSO's address, to skip it, and the
/// ranges found so far.
struct Walk {
    vdso: usize,
    ranges: Vec<(usize, usize)>,
    release: bool,
}

/// The whole pages inside `[start, start + len)`.
fn whole_pages(start: usize, len: usize) -> Option<(usize, usize)> {
    let first = start.div_ceil(PAGE) * PAGE;
    let end = (start + len) / PAGE * PAGE;
    (end > first).then_some((first, end - first))
}

unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr hands a valid `info` for the call's duration, and
    // `data` is the `Walk` `text_ranges` passed.
    let (info, walk) = unsafe { (&*info, &mut *data.cast::<Walk>()) };
    if info.dlpi_phdr.is_null() || info.dlpi_addr as usize == walk.vdso {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
            continue;
        }
        let start = (info.dlpi_addr as usize).wrapping_add(h.p_vaddr as usize);
        if let Some(range) = whole_pages(start, h.p_memsz as usize) {
            if walk.release {
                release(&[range]);
            }
            walk.ranges.push(range);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_pages_inside_the_segment() {
        assert_eq!(whole_pages(0x1000, 0x3000), Some((0x1000, 0x3000)));
        assert_eq!(whole_pages(0x1010, 0x3000), Some((0x2000, 0x2000)));
        assert_eq!(whole_pages(0x1000, 0x0fff), None);
        assert_eq!(whole_pages(0x1800, 0x1000), None);
    }

    /// The pages come back as they were: code and constants still work, and
    /// data written before is still there.
    #[test]
    fn the_process_runs_on_after_giving_pages_back() {
        static TABLE: [u64; 4] = [3, 1, 4, 1];
        let mut written = vec![7u8; 1 << 16];
        written[12345] = 42;
        let before: u64 = TABLE.iter().sum();
        let mapped = rss_file_kib();
        assert!(release_startup_pages() > 0);
        let after = rss_file_kib();
        assert!(after < mapped, "RssFile {mapped} KiB -> {after} KiB");
        assert_eq!(TABLE.iter().sum::<u64>(), before);
        assert_eq!(written[12345], 42);
        assert_eq!(format!("{:?}", std::path::Path::new("/x")), "\"/x\"");
        release(&text_ranges());
        let everything = rss_file_kib();
        assert!(
            everything < mapped,
            "RssFile {mapped} KiB -> {everything} KiB"
        );
        assert_eq!(TABLE.iter().sum::<u64>(), before);
        assert_eq!(written[12345], 42);
    }

    /// The kernel's count of this process's resident file pages.
    fn rss_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
