//! The QEMU command line, laid out exactly as QEMUMachine does.

use std::os::fd::RawFd;
use std::path::Path;

use crate::config::Config;
use crate::option_value::escape_option_value;

/// How the monitor reaches QEMU, once its socket exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MonitorChardev {
    /// `fd=N` of an inherited socketpair end.
    Fd(RawFd),
    /// `path=P`: QEMU connects to our UNIX listener.
    Unix(String),
    /// `host=H,port=P`: QEMU connects to our TCP listener.
    Tcp(String, u16),
}

/// Everything QEMU gets attached to at launch, once its sockets and files exist.
#[derive(Debug, Default)]
pub(crate) struct Attachments<'a> {
    pub(crate) monitor: Option<MonitorChardev>,
    pub(crate) console_fd: Option<RawFd>,
    pub(crate) guest_image: Option<&'a Path>,
    pub(crate) qtest_fd: Option<RawFd>,
    /// Add `-accel qtest` (only where the binary has it).
    pub(crate) qtest_accel: bool,
    pub(crate) guest_agent_fd: Option<RawFd>,
    /// `fd=N` of QEMU's connected socket to each virtiofs share's daemon.
    pub(crate) virtiofs: Vec<String>,
}

/// The full argv: wrapper + binary + `-display none -vga none` + monitor + `-machine` +
/// accelerator + console + built-in guest + qtest + guest agent + `-add-fd` + the user's
/// args (last, so they can add to or override ours).
pub(crate) fn command_line(config: &Config, with: &Attachments<'_>) -> Vec<String> {
    let mut argv: Vec<String> = config.wrapper.clone();
    argv.push(config.binary.clone());
    argv.extend(["-display", "none", "-vga", "none"].map(String::from));
    if let Some(monitor) = &with.monitor {
        let chardev = match monitor {
            MonitorChardev::Fd(fd) => format!("socket,id=mon,fd={fd}"),
            MonitorChardev::Unix(path) => {
                format!("socket,id=mon,path={}", escape_option_value(path))
            }
            MonitorChardev::Tcp(host, port) => format!(
                "socket,id=mon,host={},port={port}",
                escape_option_value(host)
            ),
        };
        argv.extend(["-chardev".into(), chardev]);
        argv.extend(["-mon", "chardev=mon,mode=control"].map(String::from));
    }
    if let Some(machine_type) = &config.machine_type {
        argv.extend(["-machine".into(), machine_type.clone()]);
    }
    if with.qtest_accel {
        argv.extend(["-accel", "qtest"].map(String::from));
    } else if let Some(accel) = config.accel {
        argv.extend(["-accel".into(), accel.as_arg().into()]);
    }
    if let Some(console) = &config.console {
        for _ in 0..console.index {
            argv.extend(["-serial", "null"].map(String::from));
        }
        if let Some(fd) = with.console_fd {
            argv.extend(["-chardev".into(), format!("socket,id=console,fd={fd}")]);
            match &console.device_type {
                None => argv.extend(["-serial", "chardev:console"].map(String::from)),
                Some(device) => {
                    argv.extend(["-device".into(), format!("{device},chardev=console")])
                }
            }
        }
    }
    if let Some(image) = with.guest_image {
        argv.extend(crate::guest::drive_args(image));
    }
    if let Some(fd) = with.qtest_fd {
        argv.extend(["-chardev".into(), format!("socket,id=qtest,fd={fd}")]);
        argv.extend(["-qtest", "chardev:qtest"].map(String::from));
    }
    if let Some(fd) = with.guest_agent_fd {
        argv.extend(["-device", "virtio-serial-pci,id=qga-serial"].map(String::from));
        argv.extend(["-chardev".into(), format!("socket,id=qga,fd={fd}")]);
        argv.extend(
            [
                "-device",
                "virtserialport,bus=qga-serial.0,chardev=qga,name=org.qemu.guest_agent.0",
            ]
            .map(String::from),
        );
    }
    for add in &config.add_fds {
        let mut spec = format!("fd={},set={},opaque={}", add.fd, add.fdset, add.opaque);
        if !add.opts.is_empty() {
            spec.push(',');
            spec.push_str(&add.opts);
        }
        argv.extend(["-add-fd".into(), spec]);
    }
    argv.extend(config.devices.args_with(&with.virtiofs));
    argv.extend(config.args.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accel, Machine};

    fn words(argv: &[String]) -> String {
        argv.join(" ")
    }

    #[test]
    fn defaults_socketpair_monitor_only() {
        let config = Machine::builder("qemu-system-x86_64");
        let argv = command_line(
            &config.unresolved(),
            &Attachments {
                monitor: Some(MonitorChardev::Fd(7)),
                ..Default::default()
            },
        );
        assert_eq!(
            words(&argv),
            "qemu-system-x86_64 -display none -vga none -chardev socket,id=mon,fd=7 -mon chardev=mon,mode=control"
        );
    }

    #[test]
    fn every_option_in_the_seeds_order() {
        let config = Machine::builder("qemu")
            .wrapper(["gdbserver", ":1234"])
            .machine_type("q35")
            .accel(Accel::Tcg)
            .console(Some("isa-serial"), 2)
            .add_fd(9, 1, "ro", "")
            .add_fd(10, 2, "rw", "x=y")
            .args(["-m", "256M"])
            .monitor_null();
        let argv = command_line(
            &config.unresolved(),
            &Attachments {
                monitor: Some(MonitorChardev::Unix("/r/qmp.sock".into())),
                console_fd: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(
            words(&argv),
            "gdbserver :1234 qemu -display none -vga none \
             -chardev socket,id=mon,path=/r/qmp.sock -mon chardev=mon,mode=control \
             -machine q35 -accel tcg -serial null -serial null \
             -chardev socket,id=console,fd=5 -device isa-serial,chardev=console \
             -add-fd fd=9,set=1,opaque=ro -add-fd fd=10,set=2,opaque=rw,x=y \
             -m 256M -monitor null"
        );
    }

    #[test]
    fn tcp_monitor_and_serial_console() {
        let config = Machine::builder("qemu").console(None, 0);
        let argv = command_line(
            &config.unresolved(),
            &Attachments {
                monitor: Some(MonitorChardev::Tcp("127.0.0.1".into(), 4444)),
                console_fd: Some(6),
                ..Default::default()
            },
        );
        assert_eq!(
            words(&argv),
            "qemu -display none -vga none -chardev socket,id=mon,host=127.0.0.1,port=4444 \
             -mon chardev=mon,mode=control -chardev socket,id=console,fd=6 -serial chardev:console"
        );
    }

    #[test]
    fn no_monitor_when_qmp_is_disabled() {
        let config = Machine::builder("qemu").qmp_monitor(false);
        let argv = command_line(&config.unresolved(), &Attachments::default());
        assert_eq!(words(&argv), "qemu -display none -vga none");
    }

    #[test]
    fn builtin_guest_boots_from_ide_with_debug_exit() {
        let config = Machine::builder("qemu").builtin_guest();
        let argv = command_line(
            &config.unresolved(),
            &Attachments {
                monitor: Some(MonitorChardev::Fd(3)),
                console_fd: Some(4),
                guest_image: Some(Path::new("/r/g.img")),
                ..Default::default()
            },
        );
        let text = words(&argv);
        assert!(text.contains("-machine pc -accel "), "{text}");
        assert!(
            text.ends_with(
                "-chardev socket,id=console,fd=4 -serial chardev:console \
             -drive file=/r/g.img,format=raw,if=ide,snapshot=on \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04"
            ),
            "{text}"
        );
    }

    #[test]
    fn qtest_and_guest_agent_chardevs() {
        let config = Machine::builder("qemu").machine_type("pc");
        let argv = command_line(
            &config.unresolved(),
            &Attachments {
                qtest_fd: Some(8),
                qtest_accel: true,
                guest_agent_fd: Some(9),
                ..Default::default()
            },
        );
        assert_eq!(
            words(&argv),
            "qemu -display none -vga none -machine pc -accel qtest \
             -chardev socket,id=qtest,fd=8 -qtest chardev:qtest \
             -device virtio-serial-pci,id=qga-serial -chardev socket,id=qga,fd=9 \
             -device virtserialport,bus=qga-serial.0,chardev=qga,name=org.qemu.guest_agent.0"
        );
    }

    #[test]
    fn kvm_or_tcg_resolves_to_one_of_them() {
        let arg = Accel::KvmOrTcg.as_arg();
        assert!(arg == "kvm" || arg == "tcg");
        // kvm-pvm hosts must never get KVM by default.
        if crate::accel::is_kvm_pvm() {
            assert_eq!(arg, "tcg");
        }
    }
}
