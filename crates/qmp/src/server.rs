//! Server mode: we listen, QEMU connects (`-chardev socket,...,server=off`).
//!
//! Binding happens before QEMU starts, so QEMU never races a missing socket. Exactly one peer
//! is accepted; later ones are refused (closed at once) and logged while the session lives.

use std::net::TcpListener as StdTcpListener;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::Address;
use crate::builder::ClientBuilder;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::session::SessionState;
use tokio::sync::watch;

/// A bound listening socket waiting for one QMP peer.
///
/// ```no_run
/// # async fn demo() -> qmp::Result<()> {
/// use std::time::Duration;
///
/// let listener = qmp::Listener::bind_unix("/tmp/vm1/qmp.sock")?;
/// // ... start QEMU with -chardev socket,id=mon,path=/tmp/vm1/qmp.sock -mon chardev=mon,mode=control
/// let client = listener
///     .accept(qmp::Client::builder(), Duration::from_secs(10))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Listener {
    socket: ListenSocket,
    address: Address,
    /// The socket file, removed when the listener is gone.
    unlink: Option<PathBuf>,
}

#[derive(Debug)]
enum ListenSocket {
    Unix(StdUnixListener),
    Tcp(StdTcpListener),
}

impl Listener {
    /// Binds a UNIX socket at `path` (which must not exist yet), mode 0600 whatever the
    /// umask, with no moment at which it exists with a looser mode (it is bound in a fresh
    /// 0700 directory next to `path`, made 0600, then linked into place). Only peers of
    /// this process's effective uid are accepted.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] (with the path as `address`) when binding fails, e.g. because
    /// `path` exists or its directory does not.
    pub fn bind_unix(path: impl AsRef<Path>) -> Result<Listener> {
        let path = path.as_ref();
        let socket = bind_private_unix(path)?;
        Ok(Listener {
            socket: ListenSocket::Unix(socket),
            address: Address::Unix(path.into()),
            unlink: Some(path.into()),
        })
    }

    /// Binds a TCP socket; port 0 picks a free port (see [`address`](Self::address)).
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] when binding fails or the bound port cannot be read.
    pub fn bind_tcp(host: &str, port: u16) -> Result<Listener> {
        let wrap = |source| Error::Listen {
            address: Address::Tcp(host.into(), port).to_string(),
            source,
        };
        let socket = StdTcpListener::bind((host, port)).map_err(wrap)?;
        let port = socket.local_addr().map_err(wrap)?.port();
        Ok(Listener {
            socket: ListenSocket::Tcp(socket),
            address: Address::Tcp(host.into(), port),
            unlink: None,
        })
    }

    /// Where peers should connect (with the real port for TCP).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits up to `timeout` for the peer, then runs the session set-up `builder` describes.
    /// The socket file is removed when the session ends (or at once on an error).
    ///
    /// # Errors
    ///
    /// - [`Error::Timeout`] when no peer (of our uid, on a UNIX socket) connects within
    ///   `timeout`; peers of another uid are closed, logged and skipped;
    /// - [`Error::Listen`] when the listening socket cannot be used or accepting fails;
    /// - after a peer connected, everything the handshake of
    ///   [`ClientBuilder::connect`] returns ([`Error::Timeout`], [`Error::Greeting`],
    ///   [`Error::Negotiation`], [`Error::Disconnected`], [`Error::Io`] for the transcript).
    pub async fn accept(mut self, builder: ClientBuilder, timeout: Duration) -> Result<Client> {
        let address = self.address.to_string();
        let wrap = |source| Error::Listen {
            address: address.clone(),
            source,
        };
        let timed_out = || Error::Timeout {
            awaited: format!("QEMU to connect to {address}"),
            after: timeout,
            seen: "no connection".into(),
        };
        let deadline = crate::deadline::Deadline::after(timeout);
        let unlink = UnlinkOnDrop(self.unlink.take());
        let (listener, stream) = match &self.socket {
            ListenSocket::Unix(socket) => {
                let socket = socket.try_clone().map_err(wrap)?;
                socket.set_nonblocking(true).map_err(wrap)?;
                let listener = tokio::net::UnixListener::from_std(socket).map_err(wrap)?;
                let stream = deadline
                    .timeout(accept_own_uid(&listener, &address))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(wrap)?;
                (Accepting::Unix(listener), Accepted::Unix(stream))
            }
            ListenSocket::Tcp(socket) => {
                let socket = socket.try_clone().map_err(wrap)?;
                socket.set_nonblocking(true).map_err(wrap)?;
                let listener = tokio::net::TcpListener::from_std(socket).map_err(wrap)?;
                let (stream, _) = deadline
                    .timeout(listener.accept())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(wrap)?;
                (Accepting::Tcp(listener), Accepted::Tcp(stream))
            }
        };
        drop(self);
        let client = match stream {
            Accepted::Unix(stream) => builder.adopt_tokio_unix(stream, address.clone()).await?,
            Accepted::Tcp(stream) => builder.adopt_tcp(stream, address.clone()).await?,
        };
        tokio::spawn(refuse_others(
            listener,
            client.session_watch(),
            address,
            unlink,
        ));
        Ok(client)
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

enum Accepting {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

impl Accepting {
    /// Accepts one connection and closes it at once.
    async fn refuse_one(&self) -> std::io::Result<()> {
        match self {
            Accepting::Unix(l) => l.accept().await.map(drop),
            Accepting::Tcp(l) => l.accept().await.map(drop),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = self.unlink.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct UnlinkOnDrop(Option<PathBuf>);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Keeps the listener open while the session lives, refusing every further peer; the socket
/// file goes when the session does.
async fn refuse_others(
    listener: Accepting,
    mut session: watch::Receiver<SessionState>,
    address: String,
    unlink: UnlinkOnDrop,
) {
    loop {
        tokio::select! {
            // Also ends when the session's state is dropped (the sender goes away).
            _ = session.wait_for(SessionState::is_closed) => break,
            result = listener.refuse_one() => match result {
                Ok(()) => tracing::warn!("refused an extra QMP peer on {address}: one session per listener"),
                Err(e) => {
                    tracing::warn!("listening on {address} failed: {e}");
                    break;
                }
            },
        }
    }
    drop(unlink);
}

/// Accepts the first peer whose uid (SO_PEERCRED) is our effective uid; others are closed
/// and logged.
async fn accept_own_uid(
    listener: &tokio::net::UnixListener,
    address: &str,
) -> std::io::Result<tokio::net::UnixStream> {
    let euid = nix::unistd::geteuid().as_raw();
    loop {
        let (stream, _) = listener.accept().await?;
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == euid => return Ok(stream),
            Ok(cred) => tracing::warn!(
                "refused a QMP peer of uid {} on {address}: only uid {euid} may connect",
                cred.uid()
            ),
            Err(e) => {
                tracing::warn!("refused a QMP peer on {address}: cannot read its credentials: {e}")
            }
        }
    }
}

/// Binds a UNIX listening socket at `path`, mode 0600 whatever the umask and with no
/// window: bound inside a fresh 0700 directory next to `path`, chmod 0600, then hard-linked
/// to `path` (which fails if `path` exists, as binding there would) and the directory
/// removed.
pub(crate) fn bind_private_unix(path: &Path) -> Result<StdUnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);

    let fail = |source| Error::Listen {
        address: path.display().to_string(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        )));
    }
    let mut attempt = 0;
    let dir = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".qmp{:x}.{n:x}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(e) => return Err(fail(e)),
        }
    };
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0.join("s"));
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let dir = RemoveDir(dir);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let temporary = dir.0.join("s");
    let socket = StdUnixListener::bind(&temporary).map_err(fail)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    std::fs::hard_link(&temporary, path).map_err(fail)?;
    drop(dir);
    Ok(socket)
}
