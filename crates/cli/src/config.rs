//! `run --config FILE`: the options of `run` from a TOML file, merged with the command
//! line (an option given there wins), checked, and turned into [`RunOptions`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::args::{seconds, AccelChoice, RunArgs};
use crate::devices::{DeviceOptions, DiskSpec, NetSpec, ShareSpec};
use crate::failure::Failure;

/// Default `--timeout` and `--shutdown-timeout`, in seconds.
const DEFAULT_SECONDS: f64 = 30.0;
/// Default `--exec-timeout`, in seconds.
const DEFAULT_EXEC_SECONDS: f64 = 600.0;

/// The device options: each list from the command line when given there, else from the
/// file (its relative paths relative to its directory); parsed.
fn devices(args: &RunArgs, file: &RunConfig) -> Result<DeviceOptions, Failure> {
    fn pick<'a>(flags: &'a [String], file: &'a Option<Vec<String>>) -> (&'a [String], bool) {
        if flags.is_empty() {
            (file.as_deref().unwrap_or_default(), true)
        } else {
            (flags, false)
        }
    }
    let (disks, from_file) = pick(&args.disk, &file.disk);
    let disks = disks
        .iter()
        .map(|text| {
            let mut disk = DiskSpec::parse(text)?;
            if from_file {
                disk.rebase(&file.base);
            }
            Ok(disk)
        })
        .collect::<Result<_, Failure>>()?;
    let (shares, from_file) = pick(&args.share, &file.share);
    let shares = shares
        .iter()
        .map(|text| {
            let mut share = ShareSpec::parse(text)?;
            if from_file {
                share.rebase(&file.base);
            }
            Ok(share)
        })
        .collect::<Result<_, Failure>>()?;
    let (nets, _) = pick(&args.net, &file.net);
    let nets = nets
        .iter()
        .map(|text| NetSpec::parse(text))
        .collect::<Result<_, Failure>>()?;
    Ok(DeviceOptions {
        smp: args.smp.or(file.smp),
        cpu: args.cpu.clone().or(file.cpu.clone()),
        disks,
        nets,
        shares,
    })
}

/// A `--config` file: every option of `run` that is not about this invocation (`--config`,
/// `--dry-run`, `--json`), under its long name with `_` for `-`. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunConfig {
    accel: Option<AccelChoice>,
    memory: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    image: Option<PathBuf>,
    disk: Option<Vec<String>>,
    net: Option<Vec<String>>,
    share: Option<Vec<String>>,
    ga: Option<PathBuf>,
    smp: Option<u32>,
    cpu: Option<String>,
    exec: Option<String>,
    prompt: Option<String>,
    exec_timeout: Option<f64>,
    qmp: Option<PathBuf>,
    console_log: Option<PathBuf>,
    keep_run_dir: Option<bool>,
    timeout: Option<f64>,
    shutdown_timeout: Option<f64>,
    binary: Option<String>,
    qemu_args: Option<Vec<String>>,
    /// The directory relative paths in it (the disks' and shares' too) are relative to.
    #[serde(skip)]
    base: PathBuf,
}

impl RunConfig {
    /// Reads and parses `path`; relative paths in it are made relative to its directory.
    pub(crate) fn load(path: &Path) -> Result<RunConfig, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
        let mut config = RunConfig::parse(&text)
            .map_err(|e| Failure::with_status(format!("{}: {e}", path.display()), 2))?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.base = base.to_path_buf();
        for file in [
            &mut config.kernel,
            &mut config.initrd,
            &mut config.image,
            &mut config.ga,
            &mut config.qmp,
            &mut config.console_log,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// Parses the text of a file; the error names an unknown key and where it is.
    pub(crate) fn parse(text: &str) -> Result<RunConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', "\n  "))
    }
}

/// The options `run` runs with: the command line over the `--config` file over the
/// defaults, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunOptions {
    pub(crate) dry_run: bool,
    pub(crate) json: bool,
    pub(crate) accel: AccelChoice,
    pub(crate) memory: Option<String>,
    pub(crate) kernel: Option<PathBuf>,
    pub(crate) initrd: Option<PathBuf>,
    pub(crate) append: Option<String>,
    pub(crate) image: Option<PathBuf>,
    pub(crate) devices: DeviceOptions,
    pub(crate) ga: Option<PathBuf>,
    pub(crate) exec: Option<String>,
    pub(crate) prompt: Option<String>,
    pub(crate) exec_timeout: Duration,
    pub(crate) qmp: Option<PathBuf>,
    pub(crate) console_log: Option<PathBuf>,
    pub(crate) keep_run_dir: bool,
    pub(crate) timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) binary: String,
    pub(crate) qemu_args: Vec<String>,
}

impl RunOptions {
    /// `args` over the `--config` file it names (if any) over the defaults.
    pub(crate) fn from_args(args: RunArgs) -> Result<RunOptions, Failure> {
        let file = match &args.config {
            Some(path) => RunConfig::load(path)?,
            None => RunConfig::default(),
        };
        RunOptions::merge(args, file)
    }

    /// `args` over `file` over the defaults; a usage failure (exit status 2) when the result
    /// does not hold together (a kernel and an image, an initrd without a kernel...).
    pub(crate) fn merge(args: RunArgs, file: RunConfig) -> Result<RunOptions, Failure> {
        let devices = devices(&args, &file)?;
        let options = RunOptions {
            dry_run: args.dry_run,
            json: args.json,
            accel: args.accel.or(file.accel).unwrap_or(AccelChoice::Auto),
            memory: args.memory.or(file.memory),
            kernel: args.kernel.or(file.kernel),
            initrd: args.initrd.or(file.initrd),
            append: args.append.or(file.append),
            image: args.image.or(file.image),
            devices,
            ga: args.ga.or(file.ga),
            exec: args.exec.or(file.exec),
            prompt: args.prompt.or(file.prompt),
            exec_timeout: seconds(
                args.exec_timeout
                    .or(file.exec_timeout)
                    .unwrap_or(DEFAULT_EXEC_SECONDS),
                "--exec-timeout",
            )?,
            qmp: args.qmp.or(file.qmp),
            console_log: args.console_log.or(file.console_log),
            keep_run_dir: args.keep_run_dir || file.keep_run_dir.unwrap_or(false),
            timeout: seconds(
                args.timeout.or(file.timeout).unwrap_or(DEFAULT_SECONDS),
                "--timeout",
            )?,
            shutdown_timeout: seconds(
                args.shutdown_timeout
                    .or(file.shutdown_timeout)
                    .unwrap_or(DEFAULT_SECONDS),
                "--shutdown-timeout",
            )?,
            binary: args
                .binary
                .or(file.binary)
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
            qemu_args: if args.qemu_args.is_empty() {
                file.qemu_args.unwrap_or_default()
            } else {
                args.qemu_args
            },
        };
        let usage = |message: &str| Err(Failure::with_status(message, 2));
        if options.devices.smp == Some(0) {
            return usage("--smp must be at least 1");
        }
        if options.devices.cpu.as_deref() == Some("") {
            return usage("--cpu: the CPU model is empty");
        }
        if options.prompt.is_some() && options.exec.is_none() {
            return usage("--prompt is for --exec");
        }
        if let Some(prompt) = &options.prompt {
            if let Err(e) = qemu_machine::Pattern::regex(prompt) {
                return Err(Failure::with_status(format!("--prompt: {e}"), 2));
            }
        }
        if options.kernel.is_some() && options.image.is_some() {
            return usage("a kernel and an image cannot both be booted: give one of them");
        }
        if options.kernel.is_none() {
            if options.initrd.is_some() {
                return usage("an initrd needs a kernel (--kernel, or kernel in --config)");
            }
            if options.append.is_some() {
                return usage(
                    "a kernel command line needs a kernel (--kernel, or kernel in --config)",
                );
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let error = RunConfig::parse("memory = \"256M\"\nmemroy = \"1G\"\n").unwrap_err();
        assert!(error.contains("memroy"), "{error}");
    }

    #[test]
    fn every_key_parses() {
        let config = RunConfig::parse(
            r#"
            accel = "tcg"
            memory = "256M"
            kernel = "/k"
            initrd = "/i"
            append = "console=ttyS0"
            image = "/img"
            qmp = "/q"
            console_log = "/log"
            keep_run_dir = true
            timeout = 5
            shutdown_timeout = 2.5
            binary = "qemu"
            qemu_args = ["-smp", "2"]
            disk = ["/d.img,format=qcow2", "/e.img"]
            net = ["user,hostfwd=tcp::0-:22"]
            share = ["/src,tag=src"]
            ga = "/ga.sock"
            smp = 2
            cpu = "max"
            exec = "make check"
            prompt = "guest> $"
            exec_timeout = 60
            "#,
        )
        .unwrap();
        assert_eq!(config.disk.as_ref().unwrap().len(), 2);
        assert_eq!(config.smp, Some(2));
        assert_eq!(config.exec_timeout, Some(60.0));
        assert_eq!(config.accel, Some(AccelChoice::Tcg));
        assert_eq!(config.shutdown_timeout, Some(2.5));
        assert_eq!(config.timeout, Some(5.0));
        assert_eq!(config.qemu_args.unwrap(), ["-smp", "2"]);
    }
}

#[cfg(test)]
mod merge_tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn args(line: &[&str]) -> RunArgs {
        let argv = ["qemu-machine", "run"].iter().chain(line);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn file(text: &str) -> RunConfig {
        RunConfig::parse(text).unwrap()
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_in() {
        let merged = RunOptions::merge(
            args(&["-m", "1G", "--shutdown-timeout", "3", "--", "-smp", "4"]),
            file("memory = \"256M\"\ntimeout = 7\nqemu_args = [\"-smp\", \"2\"]\n"),
        )
        .unwrap();
        assert_eq!(merged.memory.as_deref(), Some("1G"));
        assert_eq!(merged.timeout, Duration::from_secs(7));
        assert_eq!(merged.shutdown_timeout, Duration::from_secs(3));
        assert_eq!(merged.qemu_args, ["-smp", "4"]);
        assert_eq!(merged.accel, AccelChoice::Auto);

        let defaults = RunOptions::merge(args(&[]), RunConfig::default()).unwrap();
        assert_eq!(defaults.timeout, Duration::from_secs(30));
        assert_eq!(defaults.shutdown_timeout, Duration::from_secs(30));
        assert!(!defaults.keep_run_dir);
    }

    #[test]
    fn device_flags_replace_the_files_lists_and_its_paths_are_relative_to_it() {
        let mut config = file(
            "disk = [\"d.img,format=qcow2\"]\nshare = [\"src\"]\nnet = [\"user\"]\nsmp = 4\n\
             exec = \"true\"\n",
        );
        config.base = PathBuf::from("/vm");
        let merged = RunOptions::merge(args(&["--smp", "2"]), config).unwrap();
        assert_eq!(merged.devices.smp, Some(2));
        assert_eq!(merged.devices.disks[0].file, PathBuf::from("/vm/d.img"));
        assert_eq!(merged.devices.disks[0].format, "qcow2");
        assert_eq!(merged.devices.shares[0].dir, PathBuf::from("/vm/src"));
        assert_eq!(merged.devices.nets.len(), 1);
        assert_eq!(merged.exec.as_deref(), Some("true"));
        assert_eq!(merged.exec_timeout, Duration::from_secs(600));

        let mut config = file("disk = [\"d.img\"]\n");
        config.base = PathBuf::from("/vm");
        let merged = RunOptions::merge(args(&["--disk", "x.img,if=ide"]), config).unwrap();
        assert_eq!(merged.devices.disks.len(), 1);
        // A path on the command line is relative to the current directory, as usual.
        assert_eq!(merged.devices.disks[0].file, PathBuf::from("x.img"));
    }

    #[test]
    fn what_does_not_hold_together_is_a_usage_error() {
        for (line, text) in [
            (&["--image", "/d.img"][..], "kernel = \"/k\""),
            (&["--initrd", "/i"][..], ""),
            (&[][..], "append = \"quiet\""),
            (&["--shutdown-timeout=-1"][..], ""),
            (&[][..], "timeout = -2"),
            (&[][..], "disk = [\"/d,if=floppy\"]"),
            (&[][..], "smp = 0"),
            (&["--prompt", "# "][..], ""),
            (&["--exec", "true"][..], "exec_timeout = -1"),
        ] {
            let error = RunOptions::merge(args(line), file(text)).unwrap_err();
            assert_eq!(error.status(), 2, "{line:?} {text:?}");
        }
    }
}
