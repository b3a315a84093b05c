//! `run --dry-run`: the QEMU command line `run` would start, as a shell script.

use crate::config::RunOptions;
use crate::failure::Failure;

use super::machine::{accel, builder};

/// The QEMU command line `run` would start, as lines of shell: comments saying what
/// differs from the real launch, then the command, shell-quoted.
///
/// The library launches QEMU with its QMP monitor and serial console on socketpairs
/// (`-chardev socket,fd=N`), which nobody can hand over by hand, and it has no way to render
/// its command line without launching. So the generated part is rendered here, following
/// the library's layout (binary, `-display none -vga none`, monitor, `-machine`, `-accel`,
/// console, then the extra arguments), with the console and QEMU's own monitor on stdio
/// instead. For the built-in guest, whose disk image qemu-machine writes at launch, the
/// script first writes it (`printf` of its boot sector, then `truncate` to its size) as
/// `builtin-guest.img` in the current directory.
pub(super) fn dry_run_script(options: &RunOptions) -> Result<String, Failure> {
    let builtin = options.kernel.is_none() && options.image.is_none();
    let builder = builder(options);
    let mut argv = vec![builder.binary().to_string()];
    argv.extend(["-display", "none", "-vga", "none"].map(String::from));
    argv.extend(["-machine", "pc", "-accel"].map(String::from));
    argv.push(accel(options.accel).resolve().as_arg().to_string());
    argv.extend(["-serial", "mon:stdio"].map(String::from));
    argv.extend(builder.device_args());
    if builtin {
        argv.extend(qemu_machine::guest::drive_args(std::path::Path::new(
            BUILTIN_GUEST_IMAGE,
        )));
    }
    argv.extend(builder.extra_args().iter().cloned());
    let mut script = String::from(
        "# qemu-machine run hands QEMU its QMP monitor and serial console on socketpairs\n\
         # (-chardev socket,id=mon,fd=N -mon chardev=mon,mode=control and\n\
         # -chardev socket,id=console,fd=N -serial chardev:console); run by hand, the\n\
         # console and QEMU's monitor are on stdio (-serial mon:stdio: Ctrl-A c switches,\n\
         # Ctrl-A x quits).\n",
    );
    if let Some(qmp) = &options.qmp {
        script.push_str(&format!(
            "# --qmp {} is served by qemu-machine, not QEMU (by hand: -qmp unix:PATH,server=on,wait=off).\n",
            qmp.display()
        ));
    }
    if let Some(ga) = &options.ga {
        script.push_str(&format!(
            "# --ga {} is served by qemu-machine over a socketpair, left out here (by hand:\n\
             # -device virtio-serial-pci -chardev socket,id=qga,path=PATH,server=on,wait=off\n\
             # -device virtserialport,chardev=qga,name=org.qemu.guest_agent.0).\n",
            ga.display()
        ));
    }
    if let Some(command) = &options.exec {
        script.push_str(&format!(
            "# --exec {command:?} is typed at the guest's prompt by qemu-machine.\n"
        ));
    }
    if let Some(log) = &options.console_log {
        script.push_str(&format!(
            "# --console-log {} is written by qemu-machine, not QEMU.\n",
            log.display()
        ));
    }
    if builtin {
        script.push_str(&format!(
            "# The built-in guest's disk, written by qemu-machine at launch: its boot sector.\n\
             printf '{}' > {BUILTIN_GUEST_IMAGE} && truncate -s {} {BUILTIN_GUEST_IMAGE}\n",
            octal_escapes(&qemu_machine::guest::boot_sector()),
            qemu_machine::guest::IMAGE_SIZE
        ));
    }
    script.push_str(&qemu_machine::shell_words(&argv));
    script.push('\n');
    Ok(script)
}

/// Where a `--dry-run` script of the built-in guest writes its disk image.
const BUILTIN_GUEST_IMAGE: &str = "builtin-guest.img";

/// `bytes` as a `printf` format that prints them: every byte as a POSIX octal escape.
fn octal_escapes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}
