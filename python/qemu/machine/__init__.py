"""
QEMU development and testing library, on the Rust qemu-machine engine.

A drop-in for QEMU's own ``qemu.machine`` package:

 | QEMUQtestProtocol: send/receive qtest messages.
 | QEMUMachine: Configure and Boot a QEMU VM
 | +-- QEMUQtestMachine: VM class, with a qtest socket.

``qemu`` is a namespace package: ``qemu.qmp`` (from PyPI) and ``qemu.utils`` sit beside
this one.
"""

from .machine import QEMUMachine
from .qtest import QEMUQtestMachine, QEMUQtestProtocol


__all__ = (
    'QEMUMachine',
    'QEMUQtestProtocol',
    'QEMUQtestMachine',
)
