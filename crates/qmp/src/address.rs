//! Where a QMP peer lives: a UNIX socket path or a TCP address.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A QMP endpoint.
///
/// Parsing follows what users type: `host:port`, `[v6addr]:port`, or a path. A string that
/// names an existing file is always a path, even when it contains `:`.
///
/// ```
/// use qmp::Address;
///
/// assert_eq!("localhost:4444".parse::<Address>().unwrap(), Address::Tcp("localhost".into(), 4444));
/// assert_eq!("[::1]:4444".parse::<Address>().unwrap(), Address::Tcp("::1".into(), 4444));
/// assert_eq!("/run/qmp.sock".parse::<Address>().unwrap(), Address::Unix("/run/qmp.sock".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A UNIX socket path.
    Unix(PathBuf),
    /// A host name or IP literal (without brackets) and a port.
    Tcp(String, u16),
}

/// The text is neither a path nor `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a QMP address: give a socket path, host:port or [v6addr]:port")]
pub struct AddressParseError(pub String);

impl FromStr for Address {
    type Err = AddressParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(AddressParseError(text.into()));
        }
        if Path::new(text).exists() {
            return Ok(Address::Unix(text.into()));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| AddressParseError(text.into()))?;
            let port = port.parse().map_err(|_| AddressParseError(text.into()))?;
            return Ok(Address::Tcp(host.into(), port));
        }
        match text.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains(['/', ':']) && !port.is_empty() =>
            {
                let port = port.parse().map_err(|_| AddressParseError(text.into()))?;
                Ok(Address::Tcp(host.into(), port))
            }
            _ => Ok(Address::Unix(text.into())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Self {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Self {
        Address::Unix(path.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let t = |s: &str| s.parse::<Address>();
        assert_eq!(t("h:1").unwrap(), Address::Tcp("h".into(), 1));
        assert_eq!(
            t("[fe80::1]:22").unwrap(),
            Address::Tcp("fe80::1".into(), 22)
        );
        assert_eq!(
            t("rel/qmp.sock").unwrap(),
            Address::Unix("rel/qmp.sock".into())
        );
        assert_eq!(t("/a:b/c").unwrap(), Address::Unix("/a:b/c".into()));
        assert!(t("host:notaport").is_err());
        assert!(t("[::1]").is_err());
        assert!(t("").is_err());
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("vm:1");
        std::fs::write(&odd, b"").unwrap();
        assert_eq!(
            t(odd.to_str().unwrap()).unwrap(),
            Address::Unix(odd.clone())
        );
        assert_eq!(Address::Tcp("::1".into(), 5).to_string(), "[::1]:5");
    }
}
