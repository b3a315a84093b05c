//! Where the QEMU programs are: the one place every test, example and benchmark looks them
//! up, so that a whole suite runs against another QEMU build with one variable:
//!
//! ```sh
//! QEMU=$(scripts/fetch-qemu 10.0) scripts/test
//! ```
//!
//! - [`qemu()`]: `$QEMU`, else `qemu-system-x86_64` on `PATH`.
//! - [`qemu_img()`], [`qemu_io()`]: `$QEMU_IMG` / `$QEMU_IO`, else the program beside
//!   `$QEMU` when there is one (as `scripts/fetch-qemu` lays them out), else the one on
//!   `PATH`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The QEMU system emulator: `$QEMU`, else `qemu-system-x86_64`.
pub fn qemu() -> String {
    std::env::var("QEMU")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// `qemu-img` of the same build as [`qemu()`].
pub fn qemu_img() -> PathBuf {
    companion("QEMU_IMG", "qemu-img")
}

/// `qemu-io` of the same build as [`qemu()`].
pub fn qemu_io() -> PathBuf {
    companion("QEMU_IO", "qemu-io")
}

fn companion(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable).filter(|path| !path.is_empty()) {
        return path.into();
    }
    std::env::var_os("QEMU")
        .filter(|path| !path.is_empty())
        .and_then(|qemu| {
            let sibling = Path::new(&qemu).parent()?.join(name);
            sibling.is_file().then_some(sibling)
        })
        .unwrap_or_else(|| name.into())
}

/// A `virtiofsd` for virtiofs tests: `$QEMU_MACHINE_VIRTIOFSD`, else `virtiofsd` on `PATH`
/// or where distributions install it, else QEMU 7.2's C daemon from Debian's package as
/// `scripts/fetch-qemu 7.2` unpacks it (fetched here when missing: Debian 12 packages no
/// other `virtiofsd`, and any daemon serves any QEMU over vhost-user).
///
/// # Panics
///
/// When no daemon is found and fetching QEMU 7.2 fails: a virtiofs test cannot run then,
/// and must not pass by skipping.
pub fn virtiofsd() -> PathBuf {
    let found = std::env::var_os("QEMU_MACHINE_VIRTIOFSD")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join("virtiofsd"))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"]
                .map(PathBuf::from)
                .into_iter()
                .find(|p| p.is_file())
        });
    if let Some(found) = found {
        return found;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cached = repo.join(".cache/qemu/7.2/root/usr/lib/qemu/virtiofsd");
    if !cached.is_file() {
        let status = Command::new(repo.join("scripts/fetch-qemu"))
            .arg("7.2")
            .stdout(std::process::Stdio::null())
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()) && cached.is_file(),
            "no virtiofsd, and `scripts/fetch-qemu 7.2` did not provide one ({status:?})"
        );
    }
    cached
}

/// A QEMU version as `-version` prints it, with the full first line for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVersion {
    /// Major, minor and micro numbers.
    pub numbers: (u32, u32, u32),
    /// The first line of `qemu -version`, e.g. `QEMU emulator version 10.0.2 (Debian ...)`.
    pub line: String,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor, micro) = self.numbers;
        write!(f, "{major}.{minor}.{micro}")
    }
}

/// The version of [`qemu()`], asked once per process. Panics with the reason when QEMU does
/// not run: every caller is a test or a benchmark that cannot go on without it.
pub fn qemu_version() -> &'static QemuVersion {
    static VERSION: OnceLock<QemuVersion> = OnceLock::new();
    VERSION.get_or_init(|| {
        let binary = qemu();
        let output = Command::new(&binary)
            .arg("-version")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {binary} -version: {e}"));
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().next().unwrap_or_default().to_string();
        let numbers = line
            .split_whitespace()
            .find_map(parse_numbers)
            .unwrap_or_else(|| panic!("{binary} -version printed no version: {text:?}"));
        QemuVersion { numbers, line }
    })
}

fn parse_numbers(word: &str) -> Option<(u32, u32, u32)> {
    let mut parts = word.split('.').map(|part| part.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_numbers;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_numbers("10.0.2"), Some((10, 0, 2)));
        assert_eq!(parse_numbers("7.2.22"), Some((7, 2, 22)));
        assert_eq!(parse_numbers("emulator"), None);
    }
}
