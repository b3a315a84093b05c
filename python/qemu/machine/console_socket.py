"""
The console of a QEMUMachine, as a socket-like object.

QEMU's version is a ``socket.socket`` subclass that QEMU can block on unless it is
drained by a Python thread reading one byte at a time. Here the engine drains the console
all the time into a bounded buffer (4 MiB, oldest bytes dropped first), so QEMU never
blocks on it whether or not anyone reads; this object reads from that buffer.
"""

import io
import os
import socket
from typing import Any, Optional

from . import _engine

# How long recv() waits for the first byte by default (QEMU's drained console: 300 s).
DEFAULT_RECV_TIMEOUT = 300.0


class _RawConsoleFile(io.RawIOBase):
    """What ``makefile('rb', buffering=0)`` gives: reads come from the console."""

    def __init__(self, console: 'ConsoleSocket'):
        super().__init__()
        self._console = console

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._console.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        self._console.sendall(bytes(data))
        return len(data)


class ConsoleSocket:
    """
    The console socket: recv, sendall, send, makefile, settimeout, setblocking, close.

    :param engine: the engine's console (made by QEMUMachine at launch).
    :param file: accepted for compatibility (the log file is set at launch).
    :param drain: accepted for compatibility (the console is always drained).
    """
    def __init__(self, address: Optional[str] = None,
                 sock_fd: Optional[int] = None,
                 file: Optional[str] = None,
                 drain: bool = True,
                 *, engine: Any = None):
        # pylint: disable=unused-argument
        if engine is None:
            # Standalone use, as with QEMU's class: adopt sock_fd, or connect to address;
            # the engine drains a copy of it from now on.
            if (address is None) == (sock_fd is None):
                raise ValueError("exactly one of address and sock_fd is needed")
            if address is not None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(address)
                    engine = _engine.Console(sock.fileno(), file)
            else:
                assert sock_fd is not None
                try:
                    engine = _engine.Console(sock_fd, file)
                finally:
                    os.close(sock_fd)
        self._engine = engine
        self._timeout: Optional[float] = DEFAULT_RECV_TIMEOUT
        self._closed = False

    def __repr__(self) -> str:
        return f"<ConsoleSocket closed={self._closed}>"

    def recv(self, bufsize: int = 1, flags: int = 0) -> bytes:
        """
        Up to ``bufsize`` bytes of console output; waits for the first one at most the
        timeout (``socket.timeout``); empty once QEMU closed the console.
        """
        if flags != 0:
            raise ValueError("flags are not supported")
        if self._closed:
            raise OSError("the console socket is closed")
        timeout = 3600.0 if self._timeout is None else self._timeout
        try:
            data: bytes = self._engine.recv(bufsize, timeout)
        except TimeoutError as err:
            raise socket.timeout("console recv timed out") from err
        return data

    def sendall(self, data: bytes, flags: int = 0) -> None:
        """Writes all of ``data`` to the guest (bounded: 10 s)."""
        # pylint: disable=unused-argument
        if self._closed:
            raise OSError("the console socket is closed")
        self._engine.sendall(bytes(data))

    def send(self, data: bytes, flags: int = 0) -> int:
        """Writes all of ``data``; returns its length."""
        self.sendall(data, flags)
        return len(data)

    def settimeout(self, value: Optional[float]) -> None:
        """Timeout of recv() in seconds (None: one hour)."""
        self._timeout = value

    def setblocking(self, value: bool) -> None:
        """Blocking recv() waits (bounded), non-blocking does not wait."""
        self._timeout = None if value else 0.0

    def makefile(self, mode: str = 'rb', buffering: int = 0, **kwargs: Any) -> Any:
        """A binary file on the console (``buffering=0``: raw)."""
        # pylint: disable=unused-argument
        raw = _RawConsoleFile(self)
        if buffering == 0:
            return raw
        return io.BufferedRWPair(raw, raw)

    def close(self) -> None:
        """Stops reading (the engine keeps draining until QEMU exits). Idempotent."""
        self._closed = True
