//! Finding the host port of a user-mode network (slirp) port forward on a running machine:
//! QEMU says it only in HMP `info usernet`, parsed here. The forwards themselves are
//! configured with [`UserNet`](crate::devices::UserNet).

use serde_json::json;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;

/// A TCP host forward in `info usernet`: its host address, its host port and its guest
/// port, as written (not yet parsed).
struct TcpForward<'a> {
    source: &'a str,
    port: &'a str,
    dest_port: Option<&'a str>,
}

/// The TCP host forwards in HMP `info usernet` output, in order.
fn tcp_forwards(info_usernet: &str) -> impl Iterator<Item = TcpForward<'_>> {
    info_usernet.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [protocol, _fd, source, port, rest @ ..] if *protocol == "TCP[HOST_FORWARD]" => {
                Some(TcpForward {
                    source,
                    port,
                    dest_port: rest.get(1).copied(),
                })
            }
            _ => None,
        }
    })
}

/// The host port of the first TCP forward on 127.0.0.1 in HMP `info usernet` output.
///
/// ```
/// let text = "Hub -1 (n0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]   3       127.0.0.1 45783       10.0.2.15    22     0     0\n";
/// assert_eq!(qemu_machine::usernet::hostfwd_port(text), Some(45783));
/// ```
pub fn hostfwd_port(info_usernet: &str) -> Option<u16> {
    tcp_forwards(info_usernet)
        .filter(|forward| forward.source == "127.0.0.1")
        .find_map(|forward| forward.port.parse().ok())
}

/// The host port forwarded to TCP `guest_port`, in HMP `info usernet` output.
///
/// ```
/// let text = "  TCP[HOST_FORWARD]   3       127.0.0.1 45783       10.0.2.15    22     0     0\n";
/// assert_eq!(qemu_machine::devices::forwarded_port(text, 22), Some(45783));
/// assert_eq!(qemu_machine::devices::forwarded_port(text, 80), None);
/// ```
pub fn forwarded_port(info_usernet: &str, guest_port: u16) -> Option<u16> {
    tcp_forwards(info_usernet)
        .filter(|forward| forward.dest_port.and_then(|p| p.parse::<u16>().ok()) == Some(guest_port))
        .find_map(|forward| forward.port.parse().ok())
}

/// HMP `info usernet` of a running machine.
async fn info_usernet(vm: &mut Machine) -> Result<String> {
    let text = vm
        .cmd(
            "human-monitor-command",
            json!({"command-line": "info usernet"}),
        )
        .await?;
    Ok(text.as_str().unwrap_or_default().to_string())
}

/// Asks the machine (`info usernet`) for the host port of its TCP forward on 127.0.0.1,
/// e.g. for `-netdev user,hostfwd=tcp:127.0.0.1:0-:22`, where QEMU picks the port.
///
/// # Errors
///
/// As [`Machine::cmd`]; [`ErrorKind::Unexpected`] when there is no TCP forward on
/// 127.0.0.1.
pub async fn machine_hostfwd_port(vm: &mut Machine) -> Result<u16> {
    let text = info_usernet(vm).await?;
    hostfwd_port(&text).ok_or_else(|| {
        Error::new(
            vm.name().to_string(),
            ErrorKind::Unexpected {
                message: format!("no TCP host forward on 127.0.0.1 in `info usernet`: {text:?}"),
            },
        )
    })
}

impl Machine {
    /// The host port that forwards to the guest's TCP `guest_port` (see
    /// [`UserNet::forward_tcp`](crate::devices::UserNet::forward_tcp); useful when the host
    /// port was 0).
    ///
    /// ```no_run
    /// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// let port = vm.host_port(22).await?;
    /// println!("ssh -p {port} 127.0.0.1");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`cmd`](Self::cmd); [`ErrorKind::Unexpected`] when no such forward exists.
    pub async fn host_port(&mut self, guest_port: u16) -> Result<u16> {
        let text = info_usernet(self).await?;
        forwarded_port(&text, guest_port).ok_or_else(|| {
            Error::new(
                self.name().to_string(),
                ErrorKind::Unexpected {
                    message: format!(
                        "no TCP host forward to guest port {guest_port} in `info usernet`: {text:?}"
                    ),
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_found_by_host_address_or_guest_port() {
        let text = "Hub -1 (n0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]   3       0.0.0.0 40001       10.0.2.15    80     0     0\n  TCP[HOST_FORWARD]   4       127.0.0.1 40002       10.0.2.15    22     0     0\n  UDP[HOST_FORWARD]   5       127.0.0.1 40003       10.0.2.15    53     0     0\n";
        assert_eq!(hostfwd_port(text), Some(40002));
        assert_eq!(forwarded_port(text, 80), Some(40001));
        assert_eq!(forwarded_port(text, 22), Some(40002));
        assert_eq!(forwarded_port(text, 53), None);
        assert_eq!(hostfwd_port("  TCP[HOST_FORWARD] 3 127.0.0.1\n"), None);
        assert_eq!(
            forwarded_port("  TCP[HOST_FORWARD] 3 127.0.0.1 40002 10.0.2.15\n", 22),
            None
        );
    }
}
