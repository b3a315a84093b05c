//! The escape key of `run`'s console: what typed input goes to the guest, and how the user
//! asks to detach (Ctrl-] q: gracefully, Ctrl-] k: at once).

/// Ctrl-]: the escape key, as in telnet and virsh console.
const ESCAPE: u8 = 0x1d;

/// How the VM is brought down at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// `system_powerdown`, up to `--shutdown-timeout` for the guest to power off, then
    /// `quit`, up to `--timeout` for QEMU to exit, then SIGKILL.
    Graceful,
    /// `quit`, up to `--timeout` for QEMU to exit, then SIGKILL.
    Immediate,
}

/// Splits typed bytes into what goes to the guest, and whether the user asked to detach
/// (Ctrl-] q: gracefully; Ctrl-] k: at once). A lone Ctrl-] waits for the next key;
/// Ctrl-] Ctrl-] sends one Ctrl-].
pub(super) fn filter_input(bytes: &[u8], escape_pending: &mut bool) -> (Vec<u8>, Option<Stop>) {
    let mut forward = Vec::with_capacity(bytes.len());
    for &byte in bytes {
        if *escape_pending {
            *escape_pending = false;
            match byte {
                b'q' | b'Q' => return (forward, Some(Stop::Graceful)),
                b'k' | b'K' => return (forward, Some(Stop::Immediate)),
                ESCAPE => forward.push(ESCAPE),
                other => forward.extend([ESCAPE, other]),
            }
        } else if byte == ESCAPE {
            *escape_pending = true;
        } else {
            forward.push(byte);
        }
    }
    (forward, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut pending = false;
        assert_eq!(filter_input(b"ab", &mut pending), (b"ab".to_vec(), None));
        assert_eq!(filter_input(b"x\x1d", &mut pending), (b"x".to_vec(), None));
        assert!(pending);
        assert_eq!(
            filter_input(b"q", &mut pending),
            (vec![], Some(Stop::Graceful))
        );
        assert_eq!(
            filter_input(b"a\x1dk", &mut pending),
            (b"a".to_vec(), Some(Stop::Immediate))
        );
        let mut pending = false;
        assert_eq!(
            filter_input(b"\x1d\x1dz", &mut pending),
            (b"\x1dz".to_vec(), None)
        );
        assert_eq!(
            filter_input(b"\x1dx\x03", &mut pending),
            (b"\x1dx\x03".to_vec(), None)
        );
    }
}
