//! The sockets `run` serves besides QEMU's own: `--qmp` and `--ga` paths claimed before the
//! launch (stale ones removed), served after it, and removed at the end; and the host
//! ports of `--net` forwards, said once they are known.

use qemu_machine::Machine;
use serde_json::json;

use crate::config::RunOptions;
use crate::failure::Failure;
use crate::term::status;

/// Makes sure `--qmp PATH` (or `--ga PATH`: `flag`) can be bound, before QEMU is launched: nothing there is fine; a
/// socket nobody listens on (connect() is refused) is stale and removed; a socket somebody
/// listens on, or anything that is not a socket, is refused. Symlinks are never followed.
pub(crate) fn claim_socket_path(path: &std::path::Path, flag: &str) -> Result<(), Failure> {
    use std::os::unix::fs::FileTypeExt;
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot check {}: {e}",
                path.display()
            )))
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(Failure::new(format!(
            "{flag} {}: exists and is not a socket; not replacing it",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Failure::new(format!(
            "{flag} {}: the socket is in use by a listening process",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| {
                Failure::new(format!(
                    "cannot remove the stale socket {}: {e}",
                    path.display()
                ))
            })?;
            status(
                &format!(
                    "qemu-machine: removed the stale socket {} (nobody was listening)",
                    path.display()
                ),
                || json!({"status": "stale-socket-removed", "path": path}),
            );
            Ok(())
        }
        Err(e) => Err(Failure::new(format!(
            "{flag} {}: cannot tell whether the socket is in use: {e}",
            path.display()
        ))),
    }
}

/// After launch: serves `--ga` (returning its path) and prints the host ports of
/// `--net` forwards.
pub(super) async fn serve_extras(
    vm: &mut Machine,
    options: &RunOptions,
) -> Result<Option<std::path::PathBuf>, Failure> {
    for net in &options.devices.nets {
        for forward in &net.forwards {
            let (protocol, port) = match forward.udp {
                false => ("tcp", vm.host_port(forward.guest_port).await?),
                // UDP forwards name their port (the parser refuses 0 for them).
                true => ("udp", forward.host_port),
            };
            let (host, guest_port) = (forward.address.to_string(), forward.guest_port);
            status(
                &format!("qemu-machine: {protocol} {host}:{port} -> guest {guest_port}"),
                || json!({"status": "forward", "protocol": protocol, "host": host, "port": port, "guest_port": guest_port}),
            );
        }
    }
    let Some(path) = &options.ga else {
        return Ok(None);
    };
    let path = std::path::absolute(path)
        .map_err(|e| Failure::new(format!("--ga {}: {e}", path.display())))?;
    let served = vm.serve_guest_agent(&path)?;
    status(
        &format!("qemu-machine: guest agent at {}", served.display()),
        || json!({"status": "guest-agent", "path": served}),
    );
    Ok(Some(served))
}

/// Removes a socket we served, if its server has not yet.
pub(super) fn remove_socket(path: Option<&std::path::Path>) {
    use std::os::unix::fs::FileTypeExt;
    if let Some(path) = path {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
    }
}
