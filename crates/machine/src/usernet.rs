//! Finding the host port of a user-mode network (slirp) port forward.

use serde_json::json;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;

/// The host port of the first TCP forward on 127.0.0.1 in HMP `info usernet` output.
///
/// ```
/// let text = "Hub -1 (n0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]   3       127.0.0.1 45783       10.0.2.15    22     0     0\n";
/// assert_eq!(qemu_machine::usernet::hostfwd_port(text), Some(45783));
/// ```
pub fn hostfwd_port(info_usernet: &str) -> Option<u16> {
    info_usernet.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [protocol, _fd, source, port, ..]
                if *protocol == "TCP[HOST_FORWARD]" && *source == "127.0.0.1" =>
            {
                port.parse().ok()
            }
            _ => None,
        }
    })
}

/// Asks the machine (`info usernet`) for the host port of its TCP forward on 127.0.0.1,
/// e.g. for `-netdev user,hostfwd=tcp:127.0.0.1:0-:22`, where QEMU picks the port.
pub async fn machine_hostfwd_port(vm: &mut Machine) -> Result<u16> {
    let text = vm
        .cmd(
            "human-monitor-command",
            json!({"command-line": "info usernet"}),
        )
        .await?;
    let text = text.as_str().unwrap_or_default();
    hostfwd_port(text).ok_or_else(|| {
        Error::new(
            vm.name().to_string(),
            ErrorKind::Unexpected {
                message: format!("no TCP host forward on 127.0.0.1 in `info usernet`: {text:?}"),
            },
        )
    })
}
