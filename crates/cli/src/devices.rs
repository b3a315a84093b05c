//! The device options of `run` (`--disk`, `--net`, `--share`), parsed from QEMU-like
//! option lists (`PATH,key=value,...`; a `,,` in a value is a literal comma), turned into
//! the library's typed devices, and rendered for `--dry-run` exactly as the library renders
//! them at launch.

use std::path::PathBuf;

use qemu_machine::devices::{Disk, DiskInterface, Share9p, UserNet};
use qemu_machine::virtiofs::VirtioFs;
use qemu_machine::MachineBuilder;

use crate::failure::Failure;

/// A usage failure (exit status 2).
fn usage(message: String) -> Failure {
    Failure::with_status(message, 2)
}

/// Splits a QEMU option list at single commas (`,,` is a literal comma).
fn split_options(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                parts.last_mut().expect("never empty").push(',');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    parts
}

/// The key=value pairs after the first element; `option` names the flag in errors.
fn pairs<'a>(option: &str, parts: &'a [String]) -> Result<Vec<(&'a str, &'a str)>, Failure> {
    parts
        .iter()
        .map(|part| {
            part.split_once('=').ok_or_else(|| {
                usage(format!(
                    "{option}: {part:?} is not key=value (a comma in a path is written ,,)"
                ))
            })
        })
        .collect()
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`), or a usage failure naming the key.
fn switch(option: &str, key: &str, value: &str) -> Result<bool, Failure> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(usage(format!(
            "{option}: bad value {value:?} for key {key} (on or off)"
        ))),
    }
}

/// `--disk PATH[,format=F][,if=virtio|ide|scsi][,readonly=on][,snapshot=on]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskSpec {
    pub(crate) file: PathBuf,
    pub(crate) format: String,
    pub(crate) interface: DiskInterface,
    pub(crate) read_only: bool,
    pub(crate) snapshot: bool,
}

impl DiskSpec {
    pub(crate) fn parse(text: &str) -> Result<DiskSpec, Failure> {
        let parts = split_options(text);
        if parts[0].is_empty() {
            return Err(usage(format!("--disk {text:?}: no image path")));
        }
        let mut disk = DiskSpec {
            file: PathBuf::from(&parts[0]),
            format: "raw".into(),
            interface: DiskInterface::Virtio,
            read_only: false,
            snapshot: false,
        };
        for (key, value) in pairs("--disk", &parts[1..])? {
            match key {
                "format" if !value.is_empty() => disk.format = value.into(),
                "if" => {
                    disk.interface = match value {
                        "virtio" => DiskInterface::Virtio,
                        "ide" => DiskInterface::Ide,
                        "scsi" => DiskInterface::Scsi,
                        _ => {
                            return Err(usage(format!(
                                "--disk: bad value {value:?} for key if (virtio, ide or scsi)"
                            )))
                        }
                    }
                }
                "readonly" => disk.read_only = switch("--disk", key, value)?,
                "snapshot" => disk.snapshot = switch("--disk", key, value)?,
                "format" => return Err(usage("--disk: empty value for key format".into())),
                _ => {
                    return Err(usage(format!(
                        "--disk: unknown key {key:?} (format, if, readonly, snapshot)"
                    )))
                }
            }
        }
        Ok(disk)
    }

    /// Relative to `base` (a `--config` file's directory).
    pub(crate) fn rebase(&mut self, base: &std::path::Path) {
        if self.file.is_relative() {
            self.file = base.join(&self.file);
        }
    }

    fn to_disk(&self) -> Disk {
        Disk::new(&self.file)
            .format(self.format.clone())
            .interface(self.interface)
            .read_only(self.read_only)
            .snapshot(self.snapshot)
    }
}

/// `--net user[,hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT]...`: forwards from the host's
/// ADDR (127.0.0.1 when empty; host port 0: any free one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetSpec {
    pub(crate) forwards: Vec<HostForward>,
}

/// One `hostfwd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostForward {
    pub(crate) udp: bool,
    pub(crate) address: std::net::Ipv4Addr,
    pub(crate) host_port: u16,
    pub(crate) guest_port: u16,
}

impl NetSpec {
    pub(crate) fn parse(text: &str) -> Result<NetSpec, Failure> {
        let parts = split_options(text);
        if parts[0] != "user" {
            return Err(usage(format!(
                "--net: unknown network type {:?} (only user)",
                parts[0]
            )));
        }
        let mut net = NetSpec {
            forwards: Vec::new(),
        };
        for (key, value) in pairs("--net", &parts[1..])? {
            if key != "hostfwd" {
                return Err(usage(format!("--net: unknown key {key:?} (hostfwd)")));
            }
            net.forwards.push(parse_hostfwd(value)?);
        }
        Ok(net)
    }

    fn to_user_net(&self) -> UserNet {
        self.forwards
            .iter()
            .fold(UserNet::new(), |net, f| match f.udp {
                false => net.forward_tcp_on(f.address, f.host_port, f.guest_port),
                true => net.forward_udp_on(f.address, f.host_port, f.guest_port),
            })
    }
}

/// `tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT`, ADDR an IPv4 address, 127.0.0.1 when empty
/// (QEMU's own default, every interface, would open the guest to the network).
fn parse_hostfwd(value: &str) -> Result<HostForward, Failure> {
    let bad = |why: &str| {
        usage(format!(
            "--net: bad value {value:?} for key hostfwd ({why}; the form is \
             tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT)"
        ))
    };
    let (udp, rest) = match (value.strip_prefix("tcp:"), value.strip_prefix("udp:")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(bad("tcp or udp")),
    };
    let (host, guest) = rest.split_once('-').ok_or_else(|| bad("no -:GUESTPORT"))?;
    let (address, host_port) = host.rsplit_once(':').ok_or_else(|| bad("no HOSTPORT"))?;
    let address = match address {
        "" => std::net::Ipv4Addr::LOCALHOST,
        text => text
            .parse()
            .map_err(|_| bad("ADDR must be an IPv4 address"))?,
    };
    let guest_port = guest
        .strip_prefix(':')
        .ok_or_else(|| bad("the guest address is always the guest's own"))?;
    let host_port: u16 = host_port.parse().map_err(|_| bad("bad HOSTPORT"))?;
    let guest_port: u16 = guest_port.parse().map_err(|_| bad("bad GUESTPORT"))?;
    if guest_port == 0 {
        return Err(bad("GUESTPORT 0"));
    }
    if udp && host_port == 0 {
        return Err(bad("a udp forward needs its HOSTPORT"));
    }
    Ok(HostForward {
        udp,
        address,
        host_port,
        guest_port,
    })
}

/// `--share DIR[,tag=TAG][,readonly=off][,fs=9p|virtiofs]`: 9p unless `fs=virtiofs`,
/// read-only unless `readonly=off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShareSpec {
    pub(crate) dir: PathBuf,
    pub(crate) tag: Option<String>,
    pub(crate) writable: bool,
    pub(crate) virtiofs: bool,
}

impl ShareSpec {
    pub(crate) fn parse(text: &str) -> Result<ShareSpec, Failure> {
        let parts = split_options(text);
        if parts[0].is_empty() {
            return Err(usage(format!("--share {text:?}: no directory")));
        }
        let mut share = ShareSpec {
            dir: PathBuf::from(&parts[0]),
            tag: None,
            writable: false,
            virtiofs: false,
        };
        for (key, value) in pairs("--share", &parts[1..])? {
            match key {
                "tag" if !value.is_empty() && value.len() <= 31 => share.tag = Some(value.into()),
                "tag" => {
                    return Err(usage(format!(
                        "--share: bad value {value:?} for key tag (1 to 31 bytes)"
                    )))
                }
                "readonly" => share.writable = !switch("--share", key, value)?,
                "fs" => {
                    share.virtiofs = match value {
                        "9p" => false,
                        "virtiofs" => true,
                        _ => {
                            return Err(usage(format!(
                                "--share: bad value {value:?} for key fs (9p, virtiofs)"
                            )))
                        }
                    }
                }
                _ => {
                    return Err(usage(format!(
                        "--share: unknown key {key:?} (tag, readonly, fs)"
                    )))
                }
            }
        }
        Ok(share)
    }

    /// Relative to `base` (a `--config` file's directory).
    pub(crate) fn rebase(&mut self, base: &std::path::Path) {
        if self.dir.is_relative() {
            self.dir = base.join(&self.dir);
        }
    }

    /// The mount tag: as given, else `share` for the first share, `shareN` for the others.
    fn tag(&self, index: usize) -> String {
        match (&self.tag, index) {
            (Some(tag), _) => tag.clone(),
            (None, 0) => "share".into(),
            (None, n) => format!("share{n}"),
        }
    }
}

/// The typed devices of `run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceOptions {
    pub(crate) smp: Option<u32>,
    pub(crate) cpu: Option<String>,
    pub(crate) disks: Vec<DiskSpec>,
    pub(crate) nets: Vec<NetSpec>,
    pub(crate) shares: Vec<ShareSpec>,
}

impl DeviceOptions {
    /// Adds them to `builder`.
    pub(crate) fn apply(&self, mut builder: MachineBuilder) -> MachineBuilder {
        if let Some(cpus) = self.smp {
            builder = builder.cpus(cpus);
        }
        if let Some(model) = &self.cpu {
            builder = builder.cpu_model(model.clone());
        }
        for disk in &self.disks {
            builder = builder.disk(disk.to_disk());
        }
        for net in &self.nets {
            builder = builder.user_net(net.to_user_net());
        }
        for (i, share) in self.shares.iter().enumerate() {
            builder = if share.virtiofs {
                builder.share_virtiofs(
                    VirtioFs::new(share.tag(i), &share.dir).writable(share.writable),
                )
            } else {
                builder.share_9p(Share9p::new(share.tag(i), &share.dir).writable(share.writable))
            };
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_and_bad_keys_are_named() {
        let disk =
            DiskSpec::parse("/a,,b.img,format=qcow2,if=scsi,readonly=on,snapshot=on").unwrap();
        assert_eq!(disk.file, PathBuf::from("/a,b.img"));
        assert_eq!(disk.format, "qcow2");
        assert_eq!(disk.interface, DiskInterface::Scsi);
        assert!(disk.read_only && disk.snapshot);
        for (bad, named) in [
            ("/x,if=floppy", "key if"),
            ("/x,readonly=maybe", "key readonly"),
            ("/x,cache=none", "\"cache\""),
            ("/x,format", "\"format\""),
            ("", "no image path"),
        ] {
            let error = DiskSpec::parse(bad).unwrap_err();
            assert_eq!(error.status(), 2);
            assert!(error.message_text().contains(named), "{bad}: {error:?}");
        }
    }

    #[test]
    fn nets_parse_and_bad_forwards_are_named() {
        let net = NetSpec::parse(
            "user,hostfwd=tcp:127.0.0.1:0-:22,hostfwd=tcp::8080-:80,hostfwd=udp:0.0.0.0:53-:5353",
        )
        .unwrap();
        let forwards: Vec<_> = net
            .forwards
            .iter()
            .map(|f| (f.udp, f.address.to_string(), f.host_port, f.guest_port))
            .collect();
        assert_eq!(
            forwards,
            [
                (false, "127.0.0.1".into(), 0, 22),
                (false, "127.0.0.1".into(), 8080, 80),
                (true, "0.0.0.0".into(), 53, 5353)
            ]
        );
        assert_eq!(NetSpec::parse("user").unwrap().forwards, []);
        for (bad, named) in [
            ("tap", "network type"),
            ("user,hostfwd=sctp::1-:2", "key hostfwd"),
            ("user,hostfwd=udp::0-:2", "needs its HOSTPORT"),
            ("user,hostfwd=tcp:localhost:1-:2", "IPv4"),
            ("user,hostfwd=tcp::x-:2", "key hostfwd"),
            ("user,hostfwd=tcp::1-10.0.2.15:2", "key hostfwd"),
            ("user,restrict=on", "\"restrict\""),
        ] {
            let error = NetSpec::parse(bad).unwrap_err();
            assert_eq!(error.status(), 2);
            assert!(error.message_text().contains(named), "{bad}: {error:?}");
        }
    }

    #[test]
    fn shares_parse_read_only_by_default() {
        let share = ShareSpec::parse(".").unwrap();
        assert!(!share.writable);
        assert_eq!(share.tag(0), "share");
        assert_eq!(share.tag(2), "share2");
        let share = ShareSpec::parse("/d,tag=src,readonly=off").unwrap();
        assert!(share.writable);
        assert!(!share.virtiofs);
        assert!(ShareSpec::parse("/d,fs=virtiofs").unwrap().virtiofs);
        assert!(!ShareSpec::parse("/d,fs=9p").unwrap().virtiofs);
        assert!(ShareSpec::parse("/d,fs=nfs").is_err());
        assert_eq!(share.tag(0), "src");
        for (bad, named) in [
            ("/d,tag=", "key tag"),
            ("/d,readonly=1", "key readonly"),
            ("/d,security_model=none", "\"security_model\""),
        ] {
            let error = ShareSpec::parse(bad).unwrap_err();
            assert!(error.message_text().contains(named), "{bad}: {error:?}");
        }
    }
}
