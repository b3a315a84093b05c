//! The guest-agent channel served at a UNIX socket path, for tools that speak the agent
//! protocol themselves (e.g. `socat - UNIX:/run/vm/qga.sock`), instead of the library's
//! [`GuestAgent`](crate::GuestAgent) session.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;

impl Machine {
    /// Serves the guest-agent channel (see
    /// [`MachineBuilder::guest_agent`](crate::MachineBuilder::guest_agent)) at `path`, a
    /// UNIX socket created with mode 0600 (a relative path is taken inside the private
    /// 0700 run dir; put an absolute one in a directory only you can write). One client
    /// at a time; a client that leaves does not close the channel, so the next one should
    /// resync (`guest-sync-delimited`). The socket serves until QEMU closes the channel,
    /// then its file is removed. Instead of, not beside, [`Machine::guest_agent`]: the
    /// channel has one reader.
    ///
    /// ```no_run
    /// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// let path = vm.serve_guest_agent("qga.sock")?;
    /// println!("socat - UNIX:{}", path.display());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`]; [`ErrorKind::NoGuestAgent`] when no channel was
    /// configured or a [`GuestAgent`](crate::GuestAgent) session took it;
    /// [`ErrorKind::Io`] when the socket cannot be created.
    pub fn serve_guest_agent(&mut self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let name = self.config.name.clone();
        let Some(running) = self.phase.running() else {
            return Err(Error::new(name, ErrorKind::NotRunning));
        };
        let path = running.run_dir.path().join(path.as_ref());
        let Some(channel) = running.guest_agent.as_ref() else {
            return Err(Error::new(name, ErrorKind::NoGuestAgent));
        };
        let channel = channel
            .try_clone()
            .map_err(|e| Error::io("duplicating the guest agent socket", e))?;
        let channel = crate::sock::split(channel, "guest agent")?;
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(format!("making {} 0600", path.display()), e));
        }
        // The channel is the proxy's now.
        if let Some(running) = self.phase.process_mut() {
            running.guest_agent = None;
        }
        tokio::spawn(serve(listener, channel, path.clone(), name));
        Ok(path)
    }
}

async fn serve(
    listener: UnixListener,
    (mut from_agent, mut to_agent): (OwnedReadHalf, OwnedWriteHalf),
    path: PathBuf,
    machine: String,
) {
    loop {
        // A closed channel (QEMU gone) ends the proxy even with no client.
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::warn!(%machine, "guest agent socket: accept failed: {e}");
                    break;
                }
            },
            _ = from_agent.readable() => {
                let mut probe = [0u8; 1];
                match from_agent.try_read(&mut probe) {
                    Ok(0) => break,
                    // Output with no client (a late reply): nobody wants it.
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
            }
        };
        let (mut client_read, mut client_write) = client.into_split();
        let agent_closed = tokio::select! {
            _ = tokio::io::copy(&mut client_read, &mut to_agent) => false,
            copied = tokio::io::copy(&mut from_agent, &mut client_write) => copied.is_ok(),
        };
        let _ = client_write.shutdown().await;
        if agent_closed {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
}
