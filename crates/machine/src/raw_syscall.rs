//! System calls that return their error instead of storing it in `errno`.
//!
//! The watchdog (and QEMU before its exec) run in the manager's memory, with the thread
//! pointer of the manager thread that spawned them (see [`watchdog`](crate::watchdog)).
//! libc's wrappers store their errors in that thread's `errno`, where they would overwrite
//! the value the thread is about to read after a failed call of its own. These do not
//! touch thread-local storage: the kernel's result comes back as it is, `-errno` on error.

use nix::libc::{c_int, c_long};

/// One system call: `Ok(result)` or `Err(errno)`.
///
/// # Safety
///
/// As the system call `number` with these arguments (pointers must be valid for it).
#[inline(always)]
pub(crate) unsafe fn syscall(number: c_long, args: [usize; 6]) -> Result<usize, c_int> {
    // SAFETY: per this function's contract.
    let ret = unsafe { raw(number, args) };
    if (-4095..0).contains(&ret) {
        Err(c_int::try_from(-ret).unwrap_or(nix::libc::EINVAL))
    } else {
        Ok(ret as usize)
    }
}

/// [`syscall`]'s arguments: up to six values of any integer or pointer type, each cast to
/// `usize` (a negative `c_int` keeps its low 32 bits, which is what the kernel reads),
/// zero-padded.
macro_rules! args {
    ($($a:expr),* $(,)?) => {{
        let mut all = [0usize; 6];
        let given: &[usize] = &[$($a as usize),*];
        let mut i = 0;
        while i < given.len() {
            all[i] = given[i];
            i += 1;
        }
        all
    }};
}
pub(crate) use args;

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn raw(number: c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 Linux system call convention: number in rax, arguments in rdi, rsi,
    // rdx, r10, r8, r9, result in rax; the kernel clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn raw(number: c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the AArch64 Linux system call convention: number in x8, arguments in x0-x5,
    // result in x0.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") number as usize,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    ret
}

/// Other architectures: libc's `syscall`, whose error goes through `errno` (of the
/// spawning thread, for the watchdog: a known, narrow race on these targets only).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn raw(number: c_long, a: [usize; 6]) -> isize {
    // SAFETY: per `syscall`'s contract.
    let ret = unsafe { nix::libc::syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if ret == -1 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(nix::libc::EINVAL) as isize)
    } else {
        ret as isize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc;

    #[test]
    fn results_and_errors_come_back_without_errno() {
        // SAFETY: getpid and close take no pointers.
        unsafe {
            assert_eq!(
                syscall(libc::SYS_getpid, [0; 6]),
                Ok(std::process::id() as usize)
            );
            assert_eq!(
                syscall(libc::SYS_close, [usize::MAX >> 33, 0, 0, 0, 0, 0]),
                Err(libc::EBADF)
            );
        }
    }
}
