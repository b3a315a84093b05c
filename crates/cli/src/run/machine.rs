//! The machine `run` asks for: the built-in guest, a kernel or an image, and the options
//! (accelerator, devices, memory, logs) turned into a [`MachineBuilder`].

use qemu_machine::{Accel, KeepRunDir, Machine, MachineBuilder};

use crate::args::AccelChoice;
use crate::config::RunOptions;

/// The library's accelerator for a choice.
pub(super) fn accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Auto => Accel::KvmOrTcg,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
    }
}

/// The machine `run` asks for: the built-in guest, a kernel or an image, and the options.
pub(super) fn builder(options: &RunOptions) -> MachineBuilder {
    let mut builder = Machine::builder(&options.binary)
        .name("run")
        .launch_timeout(options.timeout);
    builder = match (&options.kernel, &options.image) {
        (Some(kernel), _) => {
            let mut builder = builder.machine_type("pc").console(None, 0).args([
                "-no-reboot",
                "-kernel",
                &kernel.display().to_string(),
            ]);
            if let Some(initrd) = &options.initrd {
                builder = builder.args(["-initrd", &initrd.display().to_string()]);
            }
            let append = options.append.as_deref().unwrap_or("console=ttyS0");
            builder.args(["-append", append])
        }
        (None, Some(image)) => builder.machine_type("pc").console(None, 0).args([
            "-drive".to_string(),
            format!("file={},if=ide,snapshot=on", qemu_opt_value(image)),
        ]),
        (None, None) => builder.builtin_guest(),
    };
    builder = options.devices.apply(builder.accel(accel(options.accel)));
    if options.ga.is_some() {
        builder = builder.guest_agent();
    }
    if let Some(memory) = &options.memory {
        builder = match memory_mib(memory) {
            Some(mib) => builder.memory_mib(mib),
            // QEMU's other forms (`size=...,maxmem=...`) go to it as they are.
            None => builder.args(["-m", memory]),
        };
    }
    if let Some(log) = &options.console_log {
        builder = builder.console_log(log);
    }
    if options.keep_run_dir {
        builder = builder.keep_run_dir(KeepRunDir::Always);
    }
    builder.args(options.qemu_args.iter().cloned())
}

/// `-m`'s plain sizes in MiB, as QEMU reads them: a number of MiB, or one with an `M`, `G`
/// or `T` suffix (the typed memory is what shared-memory devices such as virtiofs size by).
fn memory_mib(text: &str) -> Option<u64> {
    let (digits, scale) = match text.char_indices().last()? {
        (i, 'M' | 'm') => (&text[..i], 1),
        (i, 'G' | 'g') => (&text[..i], 1024),
        (i, 'T' | 't') => (&text[..i], 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// `path` as one value of a QEMU option list (`-drive file=...`), commas doubled
/// ([`qemu_machine::escape_option_value`]).
pub(crate) fn qemu_opt_value(path: &std::path::Path) -> String {
    qemu_machine::escape_option_value(&path.display().to_string()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_memory_sizes_are_typed_and_others_left_to_qemu() {
        assert_eq!(memory_mib("256"), Some(256));
        assert_eq!(memory_mib("256M"), Some(256));
        assert_eq!(memory_mib("2G"), Some(2048));
        assert_eq!(memory_mib("1t"), Some(1 << 20));
        for other in [
            "",
            "M",
            "1.5G",
            "size=1G,maxmem=4G",
            "99999999999999999999T",
        ] {
            assert_eq!(memory_mib(other), None, "{other}");
        }
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(
            qemu_opt_value(std::path::Path::new("/a,b/c,,d.img")),
            "/a,,b/c,,,,d.img"
        );
        assert_eq!(qemu_opt_value(std::path::Path::new("/plain")), "/plain");
    }
}
