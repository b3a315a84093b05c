//! Descriptors and child processes through `/proc`, for the watchdog: closing every
//! descriptor but one, and finding and killing its children (wherever they moved their
//! process group or session). It runs in the manager's memory (see
//! [`watchdog`](crate::watchdog)): raw system calls only, `getdents64` into a stack
//! buffer, no allocation.

use std::os::fd::RawFd;

use nix::libc::{self, c_char, c_int, c_uint, pid_t};

use crate::raw_syscall::{args, syscall as call};

/// Opens `path` (NUL-terminated) relative to `dir` read-only; the descriptor.
fn open_at(dir: c_int, path: *const c_char, flags: c_int) -> Option<c_int> {
    // SAFETY: openat of a NUL-terminated path the caller keeps alive.
    unsafe {
        call(
            libc::SYS_openat,
            args![dir, path, flags | libc::O_RDONLY | libc::O_CLOEXEC, 0],
        )
    }
    .ok()
    .map(|fd| fd as c_int)
}

fn close(fd: c_int) {
    // SAFETY: close of our own descriptor.
    let _ = unsafe { call(libc::SYS_close, args![fd]) };
}

/// Closes every descriptor but `keep`: `close_range`, or one by one from /proc/self/fd on
/// kernels before 5.9.
pub(crate) fn close_all_but(keep: RawFd) {
    let keep = keep as c_uint;
    // SAFETY: close_range closes our own descriptors.
    let ranged = unsafe {
        (keep == 0 || call(libc::SYS_close_range, args![0, keep - 1, 0]).is_ok())
            && call(libc::SYS_close_range, args![keep + 1, c_uint::MAX, 0]).is_ok()
    };
    if ranged {
        return;
    }
    let Some(dir) = open_at(libc::AT_FDCWD, c"/proc/self/fd".as_ptr(), libc::O_DIRECTORY) else {
        return;
    };
    // /proc/self/fd is listed in descriptor order: closing the ones already listed does
    // not disturb the listing.
    for_each_entry(dir, |name| {
        if let Some(fd) = parse_number(name) {
            if fd != keep as c_int && fd != dir {
                close(fd);
            }
        }
    });
    close(dir);
}

/// SIGKILLs every process whose parent is `me`, found by scanning /proc/<pid>/stat.
pub(crate) fn kill_children(me: pid_t) {
    let Some(proc) = open_at(libc::AT_FDCWD, c"/proc".as_ptr(), libc::O_DIRECTORY) else {
        return;
    };
    for_each_entry(proc, |name| {
        let Some(pid) = parse_number(name) else {
            return;
        };
        if parent_of(proc, name) == Some(me) {
            // SAFETY: kill takes no pointer.
            let _ = unsafe { call(libc::SYS_kill, args![pid, libc::SIGKILL]) };
        }
    });
    close(proc);
}

/// The parent pid from /proc/<name>/stat (`proc` is an open /proc).
fn parent_of(proc: c_int, name: &[u8]) -> Option<pid_t> {
    const SUFFIX: &[u8] = b"/stat\0";
    let mut path = [0u8; 32];
    let end = name.len() + SUFFIX.len();
    path.get_mut(..name.len())?.copy_from_slice(name);
    path.get_mut(name.len()..end)?.copy_from_slice(SUFFIX);
    let fd = open_at(proc, path.as_ptr().cast(), 0)?;
    let mut stat = [0u8; 512];
    // SAFETY: read into a buffer on our stack, of its length.
    let n = unsafe { call(libc::SYS_read, args![fd, stat.as_mut_ptr(), stat.len()]) };
    close(fd);
    parse_ppid(stat.get(..n.ok()?)?)
}

/// `pid (comm) state ppid ...`: comm may hold spaces and parentheses, the fields after it
/// do not, so the last `)` ends it.
fn parse_ppid(stat: &[u8]) -> Option<pid_t> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat
        .get(close + 1..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    fields.next()?; // state
    parse_number(fields.next()?)
}

/// A non-negative decimal that fits a pid (or a descriptor number).
fn parse_number(text: &[u8]) -> Option<c_int> {
    if text.is_empty() || text.len() > 10 {
        return None;
    }
    let mut value: c_int = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(c_int::from(b - b'0'))?;
    }
    Some(value)
}

/// Calls `f` with the name of each entry of the open directory `dir` (getdents64 into a
/// stack buffer; no allocation, unlike readdir).
fn for_each_entry(dir: c_int, mut f: impl FnMut(&[u8])) {
    // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name (NUL-ended).
    const NAME_AT: usize = 19;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let got = unsafe {
            call(
                libc::SYS_getdents64,
                args![dir, buf.as_mut_ptr(), buf.len()],
            )
        };
        let Ok(n @ 1..) = got else {
            return;
        };
        let mut at = 0;
        while at + NAME_AT <= n {
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            let Some(record) = buf.get(at + NAME_AT..at + reclen) else {
                return;
            };
            if reclen == 0 {
                return;
            }
            let len = record.iter().position(|&b| b == 0).unwrap_or(record.len());
            f(&record[..len]);
            at += reclen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_their_parent() {
        assert_eq!(parse_ppid(b"42 (qemu) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid(b"42 (a) b) c) Z 1234 0"), Some(1234));
        assert_eq!(parse_ppid(b"42 (x"), None);
        assert_eq!(parse_ppid(b"42 (x) S"), None);
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_number(b"2147483648"), None);
        assert_eq!(parse_number(b"self"), None);
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"12a"), None);
    }
}
