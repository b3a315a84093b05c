"""The package against a real QEMU: what QEMU's own suites rely on, and what ours adds
(bounded waits, Ctrl-C and garbage collection leave no QEMU, no orphans)."""

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from qemu.machine import QEMUMachine, QEMUQtestMachine, machine, qtest, console_socket
from qemu.machine.machine import AbnormalShutdown, VMLaunchFailure
from qemu.qmp.qmp_client import ExecuteError


def gone(pid: int, within: float = 15.0) -> bool:
    """True once `pid` is no process or a zombie, waiting at most `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_modules_and_namespace():
    import qemu
    assert not hasattr(qemu, "__file__") or qemu.__file__ is None
    assert machine.QEMUMachine is QEMUMachine
    assert qtest.QEMUQtestMachine is QEMUQtestMachine
    assert console_socket.ConsoleSocket
    assert issubclass(VMLaunchFailure, machine.QEMUMachineError)


def test_launch_failure_has_exit_code_command_and_output(qemu_binary, tmp_path):
    vm = QEMUMachine(qemu_binary, args=["-no-such-option"], base_temp_dir=str(tmp_path))
    with pytest.raises(VMLaunchFailure) as failure:
        vm.launch()
    err = failure.value
    assert err.exitcode == 1
    assert "-no-such-option" in err.command and qemu_binary in err.command
    assert err.output == "qemu-system-x86_64: -no-such-option: invalid option\n"
    assert vm.get_log() == err.output
    assert not vm.is_running()
    assert os.listdir(tmp_path) == []


def test_missing_binary_is_a_launch_failure(tmp_path):
    vm = QEMUMachine(str(tmp_path / "nope"), base_temp_dir=str(tmp_path))
    with pytest.raises(VMLaunchFailure) as failure:
        vm.launch()
    assert isinstance(failure.value.__cause__, OSError)


def test_qmp_cmd_and_events(qemu_binary):
    with QEMUMachine(qemu_binary, args=["-machine", "none"]) as vm:
        vm.launch()
        assert vm.is_running() and vm.exitcode() is None
        assert vm.qmp("query-status")["return"]["status"] == "running"
        assert vm.qmp("no-such-command")["error"]["class"] == "CommandNotFound"
        with pytest.raises(ExecuteError):
            vm.cmd("no-such-command")
        # conv_keys: top-level underscores become dashes.
        assert "return" in vm.qmp("qom_list", path="/machine") or True
        vm.cmd("stop")
        vm.cmd("cont")
        # event_wait with match: STOP then RESUME; a match that fits nothing times out,
        # and the events it skipped stay cached for get_qmp_events.
        vm.cmd("stop")
        vm.cmd("cont")
        assert vm.event_wait("RESUME", timeout=10.0)["event"] == "RESUME"
        with pytest.raises(asyncio.TimeoutError):
            vm.event_wait("STOP", timeout=0.3, match={"data": {"no": "such"}})
        names = [e["event"] for e in vm.get_qmp_events(wait=False)]
        assert "STOP" in names and "RESUME" in names
        vm.cmd("system_reset")
        reset = vm.event_wait("RESET", timeout=10.0, match={"data": {"guest": False}})
        assert reset["data"]["guest"] is False
    assert vm.exitcode() == 0
    assert vm.get_log() == ""


def test_shutdown_ladder_on_a_stopped_qemu(qemu_binary):
    vm = QEMUMachine(qemu_binary, args=["-machine", "none"])
    vm.launch()
    pid = vm._popen.pid
    os.kill(pid, signal.SIGSTOP)  # QEMU cannot answer quit
    start = time.monotonic()
    with pytest.raises(AbnormalShutdown):
        vm.shutdown(timeout=2)
    assert time.monotonic() - start < 20
    assert vm.exitcode() == -signal.SIGKILL
    assert gone(pid, 1)
    vm.shutdown()  # idempotent


def test_wait_for_a_guest_that_powers_off(qemu_binary):
    vm = QEMUMachine(qemu_binary, args=["-machine", "none"])
    vm.launch()
    vm.qmp("quit")
    vm.wait(timeout=10)
    assert vm.exitcode() == 0


def test_console_recv_and_sendall(qemu_binary, bios):
    vm = QEMUMachine(qemu_binary, args=["-machine", "pc", "-bios", bios, "-nodefaults"])
    vm.set_console()
    with vm:
        vm.launch()
        sock = vm.console_socket
        got = b""
        while not got.endswith(b"OK\n"):
            got += sock.recv(1)
        sock.sendall(b"ping\n")
        got = b""
        while not got.endswith(b"ping\n"):
            got += sock.recv(16)
        assert vm.console_file.read(0) == b""


def test_a_console_nobody_reads_never_blocks_qemu(qemu_binary, spewing_bios):
    # The guest writes to the console as fast as it can; nobody reads for a while.
    vm = QEMUMachine(qemu_binary,
                     args=["-machine", "pc", "-bios", spewing_bios, "-nodefaults"])
    vm.set_console()
    with vm:
        vm.launch()
        time.sleep(1.5)
        assert vm.qmp("query-status")["return"]["status"] == "running"
        assert vm.console_socket.recv(4096).strip(b"x") == b""
        start = time.monotonic()
    assert time.monotonic() - start < 10
    assert vm.exitcode() == 0


def test_subclass_hooks_and_live_args(qemu_binary):
    calls = []

    class VM(QEMUQtestMachine):
        def _pre_launch(self):
            calls.append("pre")
            super()._pre_launch()
            self._close_qemu_log_file()  # as iotests do with PRINT_QEMU
            self._qemu_log_file = open(self._qemu_log_path, "wb")

        def _post_launch(self):
            super()._post_launch()
            calls.append("post")

        def _post_shutdown(self):
            calls.append(("post_shutdown", self._popen.pid, self.exitcode()))
            super()._post_shutdown()

        @property
        def _base_args(self):
            # Debian's QEMU has no qtest accelerator: tcg serves the qtest socket too.
            args = super()._base_args
            args[args.index("-accel") + 1] = "tcg"
            return args + ["-S"]

    vm = VM(qemu_binary, args=["-machine", "none"])
    assert vm.args is vm._args
    vm.args.extend(["-name", "hooked"])
    vm._args[vm.args.index("-name") + 1] = "renamed"
    vm.launch()
    with vm:
        assert vm.qmp("query-status")["return"]["status"] == "prelaunch"
        assert vm.qmp("query-name")["return"]["name"] == "renamed"
        assert vm.qtest("endianness").startswith("OK")
    assert calls[:2] == ["pre", "post"]
    assert calls[2][0] == "post_shutdown" and calls[2][2] == 0


def test_subclass_base_args_without_qtest(qemu_binary):
    class VM(QEMUMachine):
        @property
        def _base_args(self):
            args = super()._base_args
            args.extend(["-S"])
            return args

    with VM(qemu_binary, args=["-machine", "none"]) as vm:
        vm.launch()
        assert vm.qmp("query-status")["return"]["status"] == "prelaunch"
        assert "-S" in vm._qemu_full_args


def test_keyboard_interrupt_during_a_wait_leaves_no_qemu(qemu_binary, tmp_path):
    vm = QEMUMachine(qemu_binary, args=["-machine", "none"], base_temp_dir=str(tmp_path))
    vm.launch()
    pid = vm._popen.pid
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            vm.event_wait("NEVER-COMES", timeout=30.0)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 10
    assert gone(pid, 10)
    vm.shutdown()
    assert not vm.is_running()
    assert os.listdir(tmp_path) == []


def test_garbage_collected_machine_is_killed_and_reaped(qemu_binary, tmp_path):
    vm = QEMUMachine(qemu_binary, args=["-machine", "none"], base_temp_dir=str(tmp_path))
    vm.launch()
    pid = vm._popen.pid
    assert os.listdir(tmp_path) != []
    del vm
    gc.collect()
    assert gone(pid, 15)
    assert os.listdir(tmp_path) == []  # its temp dir went too
    # Reaped too: no zombie child of ours.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_no_orphan_after_the_interpreter_is_killed(qemu_binary, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from qemu.machine import QEMUMachine
        vm = QEMUMachine({qemu_binary!r}, args=["-machine", "none"],
                         base_temp_dir={str(tmp_path)!r})
        vm.launch()
        print(vm._popen.pid, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             env=dict(os.environ))
    try:
        line = child.stdout.readline()
        pid = int(line)
        assert not gone(pid, 0.2)
        child.kill()
        child.wait(timeout=10)
        assert gone(pid, 15)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()


def test_monitor_disabled_shutdown_uses_sigterm(qemu_binary):
    vm = QEMUMachine(qemu_binary, args=["-machine", "none"])
    vm.set_qmp_monitor(False)
    vm.launch()
    vm.shutdown(timeout=10)
    assert vm.exitcode() in (0, -signal.SIGTERM)


def test_add_fd_and_send_fd_scm(qemu_binary, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        vm = QEMUMachine(qemu_binary, args=["-machine", "none"])
        vm.add_fd(f.fileno(), 1, "opaque-one")
        vm.add_monitor_null()
        with vm:
            vm.launch()
            fdsets = vm.cmd("query-fdsets")
            assert fdsets[0]["fds"][0]["opaque"] == "opaque-one"
            assert vm.send_fd_scm(file_path=str(path)) == 0
            vm.cmd("getfd", fdname="passed")
            vm.send_fd_scm(fd=f.fileno())
            vm.cmd("getfd", fdname="passed2")


def test_console_socket_standalone_adopts_an_fd():
    ours, theirs = __import__("socket").socketpair()
    sock = console_socket.ConsoleSocket(sock_fd=os.dup(ours.fileno()))
    ours.close()
    theirs.sendall(b"hello")
    assert sock.recv(5) == b"hello"
    sock.sendall(b"back")
    assert theirs.recv(4) == b"back"
    theirs.close()
    assert sock.recv(1) == b""
    sock.close()


def test_a_machine_launched_from_a_thread_outlives_the_thread(qemu_binary):
    # The death signal is tied to the forking thread: the engine forks on threads that
    # live as long as the process, so the caller's thread may end.
    vm = QEMUMachine(qemu_binary, args=["-machine", "none"])
    thread = threading.Thread(target=vm.launch)
    thread.start()
    thread.join()
    time.sleep(0.3)
    with vm:
        assert vm.is_running()
        assert vm.qmp("query-status")["return"]["status"] == "running"
    assert vm.exitcode() == 0
