//! The built-in guest: a boot sector this library makes itself (no download, no assembler),
//! for demos and for most lifecycle and console tests. Under TCG it prints its banner about
//! 0.1 s after launch.
//!
//! Behaviour, on COM1 (0x3f8, 115200 8N1, UART FIFO left off so no input is lost):
//! - prints [`BANNER`] as soon as the BIOS hands over;
//! - echoes every byte it receives, except four control bytes:
//!   [`POWEROFF`] prints `BYE` and powers off through ACPI (S5);
//!   [`DEBUG_EXIT`] writes to `isa-debug-exit`, so QEMU exits with [`DEBUG_EXIT_STATUS`];
//!   [`RESET`] pulses the 8042 reset line (a `RESET` event, then the banner again);
//!   [`HANG`] stops the CPU with interrupts off (it then ignores the power button);
//! - answers the ACPI power button (QMP `system_powerdown`) like [`POWEROFF`].
//!
//! The layout is documented byte by byte in the project's `shared/guests.md` (§1.2).

use std::io;
use std::path::Path;

/// What the guest prints when it starts.
pub const BANNER: &str = "READY\n";
/// What it prints before powering off.
pub const GOODBYE: &str = "BYE\n";
/// Ctrl-D: print `BYE`, ACPI poweroff.
pub const POWEROFF: u8 = 0x04;
/// Ctrl-X: exit through `isa-debug-exit` (falls back to [`POWEROFF`] without the device).
pub const DEBUG_EXIT: u8 = 0x18;
/// Ctrl-R: reset the machine.
pub const RESET: u8 = 0x12;
/// Ctrl-G: hang with interrupts off.
pub const HANG: u8 = 0x07;
/// QEMU's exit status after [`DEBUG_EXIT`]: `(0x10 << 1) | 1`.
pub const DEBUG_EXIT_STATUS: i32 = 33;
/// The `isa-debug-exit` device the guest expects.
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// Image size that boots from every disk interface (SeaBIOS needs a full cylinder for
/// AHCI and virtio-blk); the file is sparse, so this costs one 512-byte write.
pub const IMAGE_SIZE: u64 = 1024 * 1024;

/// The program, loaded at 0x7c00 (real mode, CS:IP normalised to 0000:7cxx).
#[rustfmt::skip]
const CODE: [u8; 201] = [
    // cli; ds = es = ss = 0; sp = 0x7c00; cld; jmp 0000:7c12
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfc, 0xea, 0x12, 0x7c,
    0x00, 0x00,
    // 16550 at 0x3f8: DLAB, divisor 1, 8N1, DTR|RTS|OUT2, IER = receive interrupt
    0xba, 0xfb, 0x03, 0xb0, 0x80, 0xee, 0xb2, 0xf8, 0xb0, 0x01, 0xee, 0xb2, 0xf9, 0x30,
    0xc0, 0xee, 0xb2, 0xfb, 0xb0, 0x03, 0xee, 0xb2, 0xfc, 0xb0, 0x0b, 0xee, 0xb2, 0xf9, 0xb0, 0x01,
    0xee,
    // IVT[0x0c] = irq4 handler; unmask IRQ4 at the master PIC
    0xc7, 0x06, 0x30, 0x00, 0xb6, 0x7c, 0xc7, 0x06, 0x32, 0x00, 0x00, 0x00, 0xe4, 0x21, 0x24,
    0xef, 0xe6, 0x21,
    // PM1_EN (0x602) = PWRBTN_EN; puts("READY\n")
    0xba, 0x02, 0x06, 0xb8, 0x00, 0x01, 0xef, 0xbe, 0xbd, 0x7c, 0xe8, 0x4b, 0x00,
    // idle: sti; hlt; cli. poll: power button pressed (PM1_STS bit 8, unless no ACPI PM)?
    0xfb, 0xf4, 0xfa, 0xba, 0x00, 0x06, 0xed, 0x40, 0x74, 0x06, 0x48, 0xf6, 0xc4, 0x01, 0x75, 0x24,
    // a received byte? dispatch the control bytes, else echo it and poll again
    0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xe8, 0xb2, 0xf8, 0xec, 0x3c, 0x18, 0x74, 0x11, 0x3c,
    0x04, 0x74, 0x11, 0x3c, 0x12, 0x74, 0x1c, 0x3c, 0x07, 0x74, 0x1c, 0xe8, 0x28, 0x00, 0xeb, 0xd3,
    // dbgexit: out 0xf4, 0x10. poweroff: puts("BYE\n"); PM1a_CNT (0x604) = SLP_EN
    0xb0, 0x10, 0xe6, 0xf4, 0xbe, 0xc4, 0x7c, 0xe8, 0x11, 0x00, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x20,
    0xef, 0xeb, 0x04,
    // reset: out 0x64, 0xfe. hang: cli; hlt; jmp hang
    0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfc,
    // puts (SI -> COM1) and putc (waits for THRE)
    0xac, 0x84, 0xc0, 0x74, 0x05,
    0xe8, 0x03, 0x00, 0xeb, 0xf6, 0xc3, 0x88, 0xc4, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x20, 0x74, 0xfb,
    0x88, 0xe0, 0xb2, 0xf8, 0xee, 0xc3,
    // irq4: EOI to the master PIC; iret
    0x50, 0xb0, 0x20, 0xe6, 0x20, 0x58, 0xcf,
    // "READY\n\0", "BYE\n\0"
    0x52, 0x45, 0x41, 0x44, 0x59, 0x0a, 0x00, 0x42, 0x59, 0x45, 0x0a, 0x00,
];

/// The 512-byte boot sector: the program, zero padding, and the `55 AA` signature.
///
/// ```
/// let sector = qemu_machine::guest::boot_sector();
/// assert_eq!(sector.len(), 512);
/// assert_eq!(&sector[510..], &[0x55, 0xaa]);
/// ```
pub fn boot_sector() -> [u8; 512] {
    let mut sector = [0u8; 512];
    sector[..CODE.len()].copy_from_slice(&CODE);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// Writes the boot image (sparse, [`IMAGE_SIZE`] bytes) to `path`.
///
/// # Errors
///
/// The I/O error when `path` cannot be created or written.
pub fn write_image(path: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(&boot_sector())?;
    file.set_len(IMAGE_SIZE)
}

/// The QEMU arguments that boot the image at `path` as the first IDE disk, never writing
/// to it (`snapshot=on`), plus the debug-exit device. Commas in `path` are escaped
/// ([`escape_option_value`](crate::escape_option_value)); a non-UTF-8 path is shown
/// lossily, so pass a UTF-8 one (a [`Machine`](crate::Machine) refuses others).
pub fn drive_args(path: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},format=raw,if=ide,snapshot=on",
            crate::option_value::escape_option_value(&path.to_string_lossy())
        ),
        "-device".into(),
        DEBUG_EXIT_DEVICE.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_addresses_line_up() {
        let sector = boot_sector();
        // `mov si, banner` loads 0x7cbd and `mov si, bye` 0x7cc4: the strings are there.
        assert_eq!(&sector[0xbd..0xc3], BANNER.as_bytes());
        assert_eq!(&sector[0xc4..0xc8], GOODBYE.as_bytes());
        // The IRQ4 vector points at 0x7cb6, which is `push ax`.
        assert_eq!(sector[0xb6], 0x50);
        // Control bytes compared in the dispatch table.
        for (offset, byte) in [
            (0x6c, DEBUG_EXIT),
            (0x70, POWEROFF),
            (0x74, RESET),
            (0x78, HANG),
        ] {
            assert_eq!(sector[offset], byte);
        }
    }
}
