"""
QEMUMachine: one QEMU VM's life, with QEMU's Python API on the Rust engine.

The API (names, signatures, defaults, hooks and the order of the steps that subclasses
see) is that of QEMU's own ``qemu.machine`` (10.0, plus the 7.2-era ``sock_dir`` and
``command()``). Underneath, the native module ``qemu.machine._engine`` does the work:
it spawns QEMU in a process group of its own that dies with its parent, speaks QMP,
queues events, drains the console, and kills and reaps QEMU when a machine is
garbage-collected.

Where QEMU's version can wait forever, this one waits at most ``FOREVER`` seconds
(one hour): ``shutdown(timeout=None)``, ``wait(None)``, ``get_qmp_event(wait=True)``,
QMP commands, and the QMP greeting in socketpair mode (``CONNECT_TIMEOUT`` when
``qmp_timer`` is None). Waits release the GIL; Ctrl-C during a wait raises
``KeyboardInterrupt`` after SIGKILLing QEMU, so nothing is left behind.
"""

import asyncio
from itertools import chain
import json
import locale
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from types import TracebackType
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import _engine
from . import console_socket

LOG = logging.getLogger(__name__)

# The longest any wait lasts that QEMU's version lets run forever, in seconds.
FOREVER = 3600.0
# How long the QMP greeting may take in socketpair mode when qmp_timer is None.
CONNECT_TIMEOUT = 120.0

QMPMessage = Dict[str, Any]
QMPReturnValue = object
SocketAddrT = Union[str, Tuple[str, int]]


class QEMUMachineError(Exception):
    """
    Exception called when an error in QEMUMachine happens.
    """


class QEMUMachineAddDeviceError(QEMUMachineError):
    """
    Exception raised when a request to add a device can not be fulfilled.
    """


class VMLaunchFailure(QEMUMachineError):
    """
    Exception raised when a VM launch was attempted, but failed.
    """
    def __init__(self, exitcode: Optional[int],
                 command: str, output: Optional[str]):
        super().__init__(exitcode, command, output)
        self.exitcode = exitcode
        self.command = command
        self.output = output

    def __str__(self) -> str:
        text = ''
        if self.__cause__ is not None:
            name = type(self.__cause__).__name__
            reason = str(self.__cause__)
            text += f"{name}: {reason}" if reason else name
        text += '\n'
        if self.exitcode is not None:
            text += f"\tExit code: {self.exitcode}\n"
        text += f"\tCommand: {self.command}\n"
        text += f"\tOutput: {self.output}\n"
        return text


class AbnormalShutdown(QEMUMachineError):
    """
    Exception raised when a graceful shutdown was requested, but not performed.
    """


def _seconds(wait: Union[bool, float, None]) -> float:
    """A wait argument of QEMU's API as seconds: False/0 none, True/None FOREVER."""
    if wait is None or wait is True:
        return FOREVER
    if wait is False:
        return 0.0
    return min(float(wait), FOREVER)


class _Popen:
    """
    The part of subprocess.Popen that QEMUMachine and its subclasses use
    (``_popen.pid``, poll, wait, kill, terminate, send_signal), on the engine's
    process. Garbage-collecting it kills and reaps QEMU.
    """
    def __init__(self, args: Sequence[str], inherit: Sequence[int],
                 log_fd: Optional[int]):
        self.args = list(args)
        self._process = _engine.Process(self.args, list(inherit), log_fd)
        self.pid: int = self._process.pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self._process.poll()
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.returncode is not None:
            return self.returncode
        code = self._process.wait(_seconds(timeout))
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = code
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self._process.send_signal(int(sig))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _QMP:
    """
    The part of ``qemu.qmp.legacy.QEMUMonitorProtocol`` that QEMUMachine uses, on the
    engine's QMP session (cmd_raw, cmd_obj, cmd, pull_event, get_events, clear_events,
    send_fd_scm, settimeout, close).
    """
    def __init__(self, sock: socket.socket, nickname: Optional[str] = None):
        self._sock = sock
        self._name = nickname or 'qmp'
        self._session: Optional[Any] = None
        self._timeout: Optional[float] = None

    def connect(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        self._session = _engine.Qmp(self._sock.fileno(), _seconds(timeout),
                                    self._name)
        greeting: Dict[str, Any] = json.loads(self._session.greeting)
        return greeting

    @property
    def _live(self) -> Any:
        if self._session is None:
            raise EOFError("QMP is not connected")
        return self._session

    def settimeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout

    def cmd_obj(self, qmp_cmd: Dict[str, Any]) -> QMPMessage:
        name = qmp_cmd['execute']
        arguments = qmp_cmd.get('arguments')
        raw = self._live.execute(
            name, None if arguments is None else json.dumps(arguments),
            _seconds(self._timeout))
        response: QMPMessage = json.loads(raw)
        if 'id' in qmp_cmd:
            response['id'] = qmp_cmd['id']
        return response

    def cmd_raw(self, name: str,
                args: Optional[Dict[str, object]] = None) -> QMPMessage:
        qmp_cmd: Dict[str, Any] = {'execute': name}
        if args:
            qmp_cmd['arguments'] = args
        return self.cmd_obj(qmp_cmd)

    def cmd(self, cmd: str, **kwds: object) -> QMPReturnValue:
        # pylint: disable=import-outside-toplevel
        from qemu.qmp.message import Message
        from qemu.qmp.models import ErrorResponse
        from qemu.qmp.qmp_client import ExecuteError

        sent: Dict[str, Any] = {'execute': cmd}
        if kwds:
            sent['arguments'] = kwds
        received = self.cmd_obj(sent)
        if 'error' in received:
            raise ExecuteError(ErrorResponse(received), Message(sent),
                               Message(received))
        return received.get('return')

    def pull_event(self, wait: Union[bool, float] = False) -> Optional[QMPMessage]:
        seconds = _seconds(wait)
        try:
            raw = self._live.pull_event(seconds)
        except TimeoutError as err:
            raise asyncio.TimeoutError(str(err)) from err
        return None if raw is None else json.loads(raw)

    def get_events(self, wait: Union[bool, float] = False) -> List[QMPMessage]:
        events = [json.loads(e) for e in self._live.drain_events()]
        if not events:
            event = self.pull_event(wait)
            if event is not None:
                events.append(event)
        return events

    def clear_events(self) -> None:
        self._live.drain_events()

    def send_fd_scm(self, fd: int) -> None:
        self._live.send_fd(fd)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


_T = TypeVar('_T', bound='QEMUMachine')


class QEMUMachine:
    """
    A QEMU VM.

    Use this object as a context manager to ensure
    the QEMU process terminates::

        with VM(binary) as vm:
            ...
        # vm is guaranteed to be shut down here
    """
    # pylint: disable=too-many-instance-attributes, too-many-public-methods

    def __init__(self,
                 binary: str,
                 args: Sequence[str] = (),
                 wrapper: Sequence[str] = (),
                 name: Optional[str] = None,
                 base_temp_dir: str = "/var/tmp",
                 monitor_address: Optional[SocketAddrT] = None,
                 drain_console: bool = False,
                 console_log: Optional[str] = None,
                 log_dir: Optional[str] = None,
                 qmp_timer: Optional[float] = 30,
                 *,
                 sock_dir: Optional[str] = None):
        '''
        Initialize a QEMUMachine

        @param binary: path to the qemu binary
        @param args: list of extra arguments
        @param wrapper: list of arguments used as prefix to qemu binary
        @param name: prefix for socket and log file names (default: id(self))
        @param base_temp_dir: default location where temp files are created
        @param monitor_address: address for QMP monitor (None: a socketpair)
        @param drain_console: accepted for compatibility: the console is
                              always drained by the engine
        @param console_log: (optional) path to console log file
        @param log_dir: where to create and keep log files
        @param qmp_timer: (optional) QMP connection timeout
        @param sock_dir: (7.2-era) where sockets go (defaults to temp_dir)
        @note: Qemu process is not started until launch() is used.
        '''
        # pylint: disable=too-many-arguments
        self._binary = binary
        self._args = list(args)
        self._wrapper = wrapper
        self._qmp_timer = qmp_timer

        self._name = name or f"{id(self):x}"
        self._sock_pair: Optional[Tuple[socket.socket, socket.socket]] = None
        self._cons_sock_pair: Optional[
            Tuple[socket.socket, socket.socket]] = None
        self._temp_dir: Optional[str] = None
        self._temp_dir_finalizer: Optional[weakref.finalize] = None
        self._base_temp_dir = base_temp_dir
        self._sock_dir = sock_dir
        self._log_dir = log_dir

        self._monitor_address = monitor_address
        self._listener: Optional[socket.socket] = None

        self._console_log_path = console_log
        self._drain_console = True if console_log else drain_console

        # Runstate
        self._qemu_log_path: Optional[str] = None
        self._qemu_log_file: Optional[Any] = None
        self._popen: Optional[_Popen] = None
        self._events: List[QMPMessage] = []
        self._iolog: Optional[str] = None
        self._qmp_set = True   # Enable QMP monitor by default.
        self._qmp_connection: Optional[_QMP] = None
        self._qemu_full_args: Tuple[str, ...] = ()
        self._launched = False
        self._machine: Optional[str] = None
        self._console_index = 0
        self._console_set = False
        self._console_device_type: Optional[str] = None
        self._console_engine: Optional[Any] = None
        self._console_socket: Optional[console_socket.ConsoleSocket] = None
        self._console_file: Optional[Any] = None
        self._remove_files: List[str] = []
        self._user_killed = False
        self._quit_issued = False
        # Descriptors of ours that QEMU inherits (the child ends of our socketpairs).
        self._pass_fds: List[int] = []

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self,
                 exc_type: Optional[Type[BaseException]],
                 exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> None:
        self.shutdown()

    def add_monitor_null(self) -> None:
        """
        This can be used to add an unused monitor instance.
        """
        self._args.append('-monitor')
        self._args.append('null')

    def add_fd(self: _T, fd: int, fdset: int,
               opaque: str, opts: str = '') -> _T:
        """
        Pass a file descriptor to the VM
        """
        options = [f'fd={fd}', f'set={fdset}', f'opaque={opaque}']
        if opts:
            options.append(opts)
        os.set_inheritable(fd, True)
        self._args.append('-add-fd')
        self._args.append(','.join(options))
        return self

    def send_fd_scm(self, fd: Optional[int] = None,
                    file_path: Optional[str] = None) -> int:
        """
        Send an fd or file_path to the remote via SCM_RIGHTS.

        Exactly one of fd and file_path must be given.  If it is
        file_path, the file will be opened read-only and the new file
        descriptor will be sent to the remote.
        """
        if file_path is not None:
            assert fd is None
            with open(file_path, "rb") as passfile:
                self._qmp.send_fd_scm(passfile.fileno())
        else:
            assert fd is not None
            self._qmp.send_fd_scm(fd)
        return 0

    @staticmethod
    def _remove_if_exists(path: str) -> None:
        """
        Remove file object at path if it exists
        """
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def is_running(self) -> bool:
        """Returns true if the VM is running."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def _subp(self) -> _Popen:
        if self._popen is None:
            raise QEMUMachineError('Subprocess pipe not present')
        return self._popen

    def exitcode(self) -> Optional[int]:
        """Returns the exit code if possible, or None."""
        if self._popen is None:
            return None
        return self._popen.poll()

    def get_pid(self) -> Optional[int]:
        """Returns the PID of the running process, or None."""
        if not self.is_running():
            return None
        return self._subp.pid

    def _load_io_log(self) -> None:
        # QEMU's output is in our locale's encoding, like the terminal it would print to.
        _, encoding = locale.getlocale()
        if self._qemu_log_path is not None:
            with open(self._qemu_log_path, "r", encoding=encoding) as iolog:
                self._iolog = iolog.read()

    @property
    def _base_args(self) -> List[str]:
        args = ['-display', 'none', '-vga', 'none']

        if self._qmp_set:
            if self._sock_pair:
                moncdev = f"socket,id=mon,fd={self._sock_pair[0].fileno()}"
            elif isinstance(self._monitor_address, tuple):
                moncdev = "socket,id=mon,host={},port={}".format(
                    *self._monitor_address
                )
            else:
                moncdev = f"socket,id=mon,path={self._monitor_address}"
            args.extend(['-chardev', moncdev, '-mon',
                         'chardev=mon,mode=control'])

        if self._machine is not None:
            args.extend(['-machine', self._machine])
        for _ in range(self._console_index):
            args.extend(['-serial', 'null'])
        if self._console_set:
            assert self._cons_sock_pair is not None
            fd = self._cons_sock_pair[0].fileno()
            args.extend(['-chardev', f"socket,id=console,fd={fd}"])
            if self._console_device_type is None:
                args.extend(['-serial', 'chardev:console'])
            else:
                device = '%s,chardev=console' % self._console_device_type
                args.extend(['-device', device])
        return args

    @property
    def args(self) -> List[str]:
        """Returns the list of arguments given to the QEMU binary."""
        return self._args

    @property
    def binary(self) -> str:
        """Returns path to the QEMU binary"""
        return self._binary

    def _pre_launch(self) -> None:
        if self._qmp_set:
            if self._monitor_address is None:
                self._sock_pair = socket.socketpair()
                self._pass_fds.append(self._sock_pair[0].fileno())
                self._qmp_connection = _QMP(self._sock_pair[1],
                                            nickname=self._name)
            else:
                self._listen_for_qemu()

        if self._console_set:
            self._cons_sock_pair = socket.socketpair()
            self._pass_fds.append(self._cons_sock_pair[0].fileno())

        # NOTE: Make sure any opened resources are *definitely* freed in
        # _post_shutdown()!
        # pylint: disable=consider-using-with
        self._qemu_log_path = os.path.join(self.log_dir, self._name + ".log")
        self._qemu_log_file = open(self._qemu_log_path, 'wb')

        self._iolog = None
        self._qemu_full_args = tuple(chain(
            self._wrapper,
            [self._binary],
            self._base_args,
            self._args
        ))

    def _listen_for_qemu(self) -> None:
        """Monitor address mode: we listen, QEMU connects (as QEMU's version does)."""
        address = self._monitor_address
        if isinstance(address, tuple):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            assert isinstance(address, str)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._remove_files.append(address)
        listener.bind(address)
        listener.listen(1)
        self._listener = listener

    def _post_launch(self) -> None:
        if self._sock_pair:
            self._sock_pair[0].close()
        if self._cons_sock_pair:
            self._cons_sock_pair[0].close()
            # Drained from now on, read or not: QEMU can never block on it.
            self._console_engine = _engine.Console(
                self._cons_sock_pair[1].fileno(), self._console_log_path)
        self._pass_fds = []
        if self._listener is not None:
            self._qmp_connection = _QMP(self._accept_qemu(), nickname=self._name)
        if self._qmp_connection:
            timeout = self._qmp_timer
            self._interruptible(self._qmp.connect,
                                CONNECT_TIMEOUT if timeout is None else timeout)

    def _accept_qemu(self) -> socket.socket:
        assert self._listener is not None
        timeout = _seconds(self._qmp_timer)
        deadline = time.monotonic() + timeout
        self._listener.settimeout(0.05)
        try:
            while True:
                try:
                    sock, _ = self._listener.accept()
                    return sock
                except socket.timeout:
                    if self._popen is not None and self._popen.poll() is not None:
                        raise ConnectionError("QEMU exited before connecting")
                    if time.monotonic() >= deadline:
                        raise
        finally:
            self._listener.close()
            self._listener = None

    def _close_qemu_log_file(self) -> None:
        if self._qemu_log_file is not None:
            self._qemu_log_file.close()
            self._qemu_log_file = None

    def _post_shutdown(self) -> None:
        """
        Called to cleanup the VM instance after the process has exited.
        May also be called after a failed launch.
        """
        LOG.debug("Cleaning up after VM process")
        # A failed launch may have left fd numbers here that the next launch must not pass.
        self._pass_fds = []
        try:
            self._close_qmp_connection()
        except Exception as err:  # pylint: disable=broad-except
            LOG.warning(
                "Exception closing QMP connection: %s",
                str(err) if str(err) else type(err).__name__
            )
        finally:
            assert self._qmp_connection is None

        if self._sock_pair:
            self._sock_pair[0].close()
            self._sock_pair[1].close()
            self._sock_pair = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._early_cleanup()
        self._console_engine = None

        self._close_qemu_log_file()

        self._load_io_log()

        self._qemu_log_path = None

        if self._temp_dir is not None:
            if self._temp_dir_finalizer is not None:
                self._temp_dir_finalizer.detach()
                self._temp_dir_finalizer = None
            shutil.rmtree(self._temp_dir)
            self._temp_dir = None

        while len(self._remove_files) > 0:
            self._remove_if_exists(self._remove_files.pop())

        exitcode = self.exitcode()
        if (exitcode is not None and exitcode < 0
                and not (self._user_killed and exitcode == -signal.SIGKILL)):
            msg = 'qemu received signal %i; command: "%s"'
            if self._qemu_full_args:
                command = ' '.join(self._qemu_full_args)
            else:
                command = ''
            LOG.warning(msg, -int(exitcode), command)

        self._quit_issued = False
        self._user_killed = False
        self._launched = False

    def launch(self) -> None:
        """
        Launch the VM and make sure we cleanup and expose the
        command line/output in case of exception
        """
        if self._launched:
            raise QEMUMachineError('VM already launched')

        try:
            self._launch()
        except BaseException as exc:
            # QEMU may have started and be exiting: wait for it (bounded, then SIGKILL),
            # so that exitcode() and the output are there for the error.
            if self._launched:
                if isinstance(exc, Exception):
                    self.wait()
                else:
                    self.kill()
            else:
                self._post_shutdown()

            if isinstance(exc, Exception):
                raise VMLaunchFailure(
                    exitcode=self.exitcode(),
                    command=' '.join(self._qemu_full_args),
                    output=self._iolog
                ) from exc

            # Don't wrap 'BaseException'; doing so would downgrade
            # that exception. However, we still want to clean up.
            raise

    def _launch(self) -> None:
        """
        Launch the VM and establish a QMP connection
        """
        self._pre_launch()
        LOG.debug('VM launch command: %r', ' '.join(self._qemu_full_args))

        log_fd = None
        if self._qemu_log_file is not None:
            log_fd = self._qemu_log_file.fileno()
        self._popen = _Popen(self._qemu_full_args, self._pass_fds, log_fd)
        self._launched = True
        self._post_launch()

    def _interruptible(self, __func: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs an engine wait; on Ctrl-C, SIGKILLs QEMU first, so none is left."""
        try:
            return __func(*args, **kwargs)
        except KeyboardInterrupt:
            if self._popen is not None:
                LOG.debug("Interrupted: killing QEMU (pid=%s)", self._popen.pid)
                self._user_killed = True
                # Nothing left to ask: a later shutdown() just reaps and cleans up.
                self._quit_issued = True
                self._popen.kill()
            raise

    def _close_qmp_connection(self) -> None:
        """
        Close the underlying QMP connection, if any.
        """
        if self._qmp_connection is None:
            return
        try:
            self._qmp.close()
        finally:
            self._qmp_connection = None

    def _early_cleanup(self) -> None:
        """
        Perform any cleanup that needs to happen before the VM exits.

        The engine drains the console whatever happens here, so QEMU
        cannot block on it while we wait for it to exit.
        """
        if self._console_file is not None:
            LOG.debug("Closing console file")
            self._console_file.close()
            self._console_file = None
        if self._console_socket is not None:
            LOG.debug("Closing console socket")
            self._console_socket.close()
            self._console_socket = None
        if self._cons_sock_pair:
            self._cons_sock_pair[0].close()
            self._cons_sock_pair[1].close()
            self._cons_sock_pair = None

    def _hard_shutdown(self) -> None:
        """
        Perform early cleanup, kill the VM, and wait for it to terminate.

        :raise subprocess.TimeoutExpired: When timeout is exceeds 60 seconds
            waiting for the QEMU process to terminate.
        """
        LOG.debug("Performing hard shutdown")
        self._early_cleanup()
        self._subp.kill()
        self._subp.wait(timeout=60)

    def _soft_shutdown(self, timeout: Optional[float]) -> None:
        """
        Perform early cleanup, attempt to gracefully shut down the VM, and wait
        for it to terminate.
        """
        LOG.debug("Attempting graceful termination")
        self._early_cleanup()

        if self._quit_issued:
            LOG.debug(
                "Anticipating QEMU termination due to prior 'quit' command, "
                "or explicit call to wait()"
            )
        else:
            LOG.debug("Politely asking QEMU to terminate")

        if self._qmp_connection:
            try:
                if not self._quit_issued:
                    # A QEMU that does not answer must not hold up the ladder: the
                    # quit gets the shutdown's own deadline.
                    self._qmp.settimeout(FOREVER if timeout is None else timeout)
                    self.qmp('quit')
            finally:
                self._close_qmp_connection()
        elif not self._quit_issued:
            LOG.debug(
                "Not anticipating QEMU quit and no QMP connection present, "
                "issuing SIGTERM"
            )
            self._subp.terminate()

        LOG.debug(
            "Waiting (timeout=%s) for QEMU process (pid=%s) to terminate",
            timeout, self._subp.pid
        )
        self._subp.wait(timeout=timeout)

    def _do_shutdown(self, timeout: Optional[float]) -> None:
        """
        Attempt to shutdown the VM gracefully; fallback to a hard shutdown.

        :raise AbnormalShutdown: When the VM could not be shut down gracefully.
        """
        try:
            self._soft_shutdown(timeout)
        except Exception as exc:
            if isinstance(exc, subprocess.TimeoutExpired):
                LOG.debug("Timed out waiting for QEMU process to exit")
            LOG.debug("Graceful shutdown failed", exc_info=True)
            LOG.debug("Falling back to hard shutdown")
            self._hard_shutdown()
            raise AbnormalShutdown("Could not perform graceful shutdown") \
                from exc

    def shutdown(self,
                 hard: bool = False,
                 timeout: Optional[float] = 30) -> None:
        """
        Terminate the VM (gracefully if possible) and perform cleanup.
        Cleanup will always be performed.

        If the VM has not yet been launched, or shutdown(), wait(), or kill()
        have already been called, this method does nothing.

        :param hard: When true, do not attempt graceful shutdown, and
                     suppress the SIGKILL warning log message.
        :param timeout: Optional timeout in seconds for graceful shutdown.
                        Default 30 seconds; None means FOREVER (one hour).
        """
        if not self._launched:
            return

        LOG.debug("Shutting down VM appliance; timeout=%s", timeout)
        if hard:
            LOG.debug("Caller requests immediate termination of QEMU process.")

        try:
            if hard:
                self._user_killed = True
                self._hard_shutdown()
            else:
                self._interruptible(self._do_shutdown, timeout)
        except KeyboardInterrupt:
            # QEMU was SIGKILLed: reap it before cleaning up (bounded).
            self._subp.wait(timeout=60)
            raise
        finally:
            self._post_shutdown()

    def kill(self) -> None:
        """
        Terminate the VM forcefully, wait for it to exit, and perform cleanup.
        """
        self.shutdown(hard=True)

    def wait(self, timeout: Optional[float] = 30) -> None:
        """
        Wait for the VM to power off and perform post-shutdown cleanup.

        :param timeout: Optional timeout in seconds. Default 30 seconds.
                        None means FOREVER (one hour).
        """
        self._quit_issued = True
        self.shutdown(timeout=timeout)

    def set_qmp_monitor(self, enabled: bool = True) -> None:
        """
        Set the QMP monitor.

        @param enabled: if False, qmp monitor options will be removed from
                        the base arguments of the resulting QEMU command
                        line. Default is True.

        .. note:: Call this function before launch().
        """
        self._qmp_set = enabled

    @property
    def _qmp(self) -> _QMP:
        if self._qmp_connection is None:
            raise QEMUMachineError("Attempt to access QMP with no connection")
        return self._qmp_connection

    @classmethod
    def _qmp_args(cls, conv_keys: bool,
                  args: Dict[str, Any]) -> Dict[str, object]:
        if conv_keys:
            return {k.replace('_', '-'): v for k, v in args.items()}
        return args

    def _call_args(self, args_dict: Optional[Dict[str, object]],
                   conv_keys: Optional[bool],
                   args: Dict[str, Any]) -> Dict[str, object]:
        """The arguments of qmp() and cmd(): `args_dict` as given, or the keyword
        arguments with '_' turned into '-' unless conv_keys=False."""
        if args_dict is not None:
            assert not args
            assert conv_keys is None
            return self._qmp_args(False, args_dict)
        return self._qmp_args(True if conv_keys is None else conv_keys, args)

    def qmp(self, cmd: str,
            args_dict: Optional[Dict[str, object]] = None,
            conv_keys: Optional[bool] = None,
            **args: Any) -> QMPMessage:
        """
        Invoke a QMP command and return the response dict
        """
        qmp_args = self._call_args(args_dict, conv_keys, args)
        ret = self._interruptible(self._qmp.cmd_raw, cmd, args=qmp_args)
        if cmd == 'quit' and 'error' not in ret and 'return' in ret:
            self._quit_issued = True
        return ret

    def cmd(self, cmd: str,
            args_dict: Optional[Dict[str, object]] = None,
            conv_keys: Optional[bool] = None,
            **args: Any) -> QMPReturnValue:
        """
        Invoke a QMP command.
        On success return the response dict.
        On failure raise an exception (qemu.qmp.qmp_client.ExecuteError).
        """
        qmp_args = self._call_args(args_dict, conv_keys, args)
        ret = self._interruptible(self._qmp.cmd, cmd, **qmp_args)
        if cmd == 'quit':
            self._quit_issued = True
        return ret

    def command(self, cmd: str,
                conv_keys: bool = True,
                **args: Any) -> QMPReturnValue:
        """The 7.2-era name of cmd()."""
        return self.cmd(cmd, conv_keys=conv_keys, **args)

    def get_qmp_event(self, wait: Union[bool, float] = False) -> Optional[QMPMessage]:
        """
        Poll for one queued QMP events and return it
        """
        if self._events:
            return self._events.pop(0)
        return self._interruptible(self._qmp.pull_event, wait=wait)

    def get_qmp_events(self, wait: Union[bool, float] = False) -> List[QMPMessage]:
        """
        Poll for queued QMP events and return a list of dicts
        """
        events = self._interruptible(self._qmp.get_events, wait=wait)
        events.extend(self._events)
        del self._events[:]
        return events

    @staticmethod
    def event_match(event: Any, match: Optional[Any]) -> bool:
        """
        Check if an event matches optional match criteria.

        The match criteria takes the form of a matching subdict. The event is
        checked to be a superset of the subdict, recursively, with matching
        values whenever the subdict values are not None.

        This has a limitation that you cannot explicitly check for None values.

        Examples, with the subdict queries on the left:
         - None matches any object.
         - {"foo": None} matches {"foo": {"bar": 1}}
         - {"foo": None} matches {"foo": 5}
         - {"foo": {"abc": None}} does not match {"foo": {"bar": 1}}
         - {"foo": {"rab": 2}} matches {"foo": {"bar": 1, "rab": 2}}
        """
        if match is None:
            return True

        try:
            for key in match:
                if key in event:
                    if not QEMUMachine.event_match(event[key], match[key]):
                        return False
                else:
                    return False
            return True
        except TypeError:
            # either match or event wasn't iterable (not a dict)
            return bool(match == event)

    def event_wait(self, name: str,
                   timeout: float = 60.0,
                   match: Optional[QMPMessage] = None) -> Optional[QMPMessage]:
        """
        event_wait waits for and returns a named event from QMP with a timeout.

        name: The event to wait for.
        timeout: seconds to wait for each event (raises asyncio.TimeoutError).
        match: Optional match criteria. See event_match for details.
        """
        return self.events_wait([(name, match)], timeout)

    def events_wait(self,
                    events: Sequence[Tuple[str, Any]],
                    timeout: float = 60.0) -> Optional[QMPMessage]:
        """
        events_wait waits for and returns a single named event from QMP.
        In the case of multiple qualifying events, this function returns the
        first one.

        :param events: A sequence of (name, match_criteria) tuples.
        :param timeout: seconds to wait for each event.

        :raise asyncio.TimeoutError:
            If timeout was non-zero and no matching events were found.

        :return: A QMP event matching the filter criteria.
                 If timeout was 0 and no event matched, None.
        """
        def _match(event: QMPMessage) -> bool:
            for name, match in events:
                if event['event'] == name and self.event_match(event, match):
                    return True
            return False

        event: Optional[QMPMessage]

        # Search cached events
        for event in self._events:
            if _match(event):
                self._events.remove(event)
                return event

        # Poll for new events
        while True:
            event = self._interruptible(self._qmp.pull_event, wait=timeout)
            if event is None:
                # None is only returned when timeout is false-ish.
                break
            if _match(event):
                return event
            self._events.append(event)

        return None

    def get_log(self) -> Optional[str]:
        """
        After self.shutdown or failed qemu execution, this returns the output
        of the qemu process.
        """
        return self._iolog

    def add_args(self, *args: str) -> None:
        """
        Adds to the list of extra arguments to be given to the QEMU binary
        """
        self._args.extend(args)

    def set_machine(self, machine_type: str) -> None:
        """
        Sets the machine type

        If set, the machine type will be added to the base arguments
        of the resulting QEMU command line.
        """
        self._machine = machine_type

    def set_console(self,
                    device_type: Optional[str] = None,
                    console_index: int = 0) -> None:
        """
        Sets the device type for a console device

        @param device_type: the device type, such as "isa-serial".  If
                            None is given (the default value) a "-serial
                            chardev:console" command line argument will
                            be used instead.
        @param console_index: the number of '-serial null' consoles
                              put before this one.
        """
        self._console_set = True
        self._console_device_type = device_type
        self._console_index = console_index

    @property
    def console_socket(self) -> console_socket.ConsoleSocket:
        """
        Returns a socket-like object connected to the console
        """
        if self._console_socket is None:
            LOG.debug("Opening console socket")
            if not self._console_set or self._console_engine is None:
                raise QEMUMachineError(
                    "Attempt to access console socket with no connection")
            self._console_socket = console_socket.ConsoleSocket(
                engine=self._console_engine)
        return self._console_socket

    @property
    def console_file(self) -> Any:
        """
        Returns a file associated with the console socket
        """
        if self._console_file is None:
            LOG.debug("Opening console file")
            self._console_file = self.console_socket.makefile(mode='rb',
                                                              buffering=0)
        return self._console_file

    @property
    def temp_dir(self) -> str:
        """
        Returns a temporary directory to be used for this machine
        """
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="qemu-machine-",
                                              dir=self._base_temp_dir)
            # Removed by _post_shutdown, or else when the machine is garbage-collected
            # (or at exit), like the QEMU that the engine kills then.
            self._temp_dir_finalizer = weakref.finalize(
                self, shutil.rmtree, self._temp_dir, ignore_errors=True)
        return self._temp_dir

    @property
    def sock_dir(self) -> str:
        """
        Returns the directory used for sockfiles by this machine (7.2-era).
        """
        if self._sock_dir:
            return self._sock_dir
        return self.temp_dir

    @property
    def log_dir(self) -> str:
        """
        Returns a directory to be used for writing logs
        """
        if self._log_dir is None:
            return self.temp_dir
        return self._log_dir
