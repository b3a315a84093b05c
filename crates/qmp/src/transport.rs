//! The byte streams QMP runs over: UNIX sockets (which can carry file descriptors) and TCP.
//!
//! Both halves are used through `&self` readiness methods, so the reader task and any number
//! of writers share one stream without splitting it, and a write can be attempted at once on
//! the caller's thread.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A connected stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(crate) fn tcp(stream: TcpStream) -> Stream {
        let _ = stream.set_nodelay(true);
        Stream::Tcp(stream)
    }

    pub(crate) fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.readable().await,
            Stream::Tcp(s) => s.readable().await,
        }
    }

    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.try_read(buf),
            Stream::Tcp(s) => s.try_read(buf),
        }
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.writable().await,
            Stream::Tcp(s) => s.writable().await,
        }
    }

    /// One non-blocking write; when `fds` is not empty they ride along as SCM_RIGHTS (the
    /// caller has made sure this is a UNIX stream).
    pub(crate) fn try_write(&self, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) if !fds.is_empty() => {
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                s.try_io(Interest::WRITABLE, || {
                    sendmsg::<UnixAddr>(
                        s.as_raw_fd(),
                        &[IoSlice::new(bytes)],
                        &[ControlMessage::ScmRights(&raw)],
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(io::Error::from)
                })
            }
            Stream::Unix(s) => s.try_write(bytes),
            Stream::Tcp(s) => s.try_write(bytes),
        }
    }

    /// Ends the connection in both directions; the reader sees EOF.
    pub(crate) fn shutdown(&self) {
        let fd = match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        };
        // An error here means the socket is already gone, which is what we want.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}
