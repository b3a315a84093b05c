"""Fixtures: the QEMU binary and a tiny BIOS.

The QEMU binary is found as the Rust tests find it (qemu_test_support::qemu(),
crates/test-support/src/binaries.rs): `$QEMU` when set and not empty, taken as given
(scripts/test makes a relative one absolute before it changes directory), else
qemu-system-x86_64 on PATH. This fixture is the Python tests' one place for it.
"""

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    binary = os.environ.get("QEMU") or shutil.which("qemu-system-x86_64")
    if not binary:
        # A failure, never a skip: the suite tests nothing without QEMU.
        pytest.fail("no QEMU: set QEMU= or install qemu-system-x86_64")
    return binary


def echo_bios() -> bytes:
    """
    A 64 KiB BIOS that prints "OK\\n" on COM1 and then echoes every byte it receives
    there (polling the UART's line status register), so console tests need no guest.
    """
    code = bytes([
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xB0, 0x4F, 0xEE,        # mov al, 'O'; out dx, al
        0xB0, 0x4B, 0xEE,        # mov al, 'K'; out dx, al
        0xB0, 0x0A, 0xEE,        # mov al, '\n'; out dx, al
        # wait: (offset 12)
        0xBA, 0xFD, 0x03,        # mov dx, 0x3fd  (line status)
        0xEC,                    # in al, dx
        0xA8, 0x01,              # test al, 1     (data ready)
        0x74, 0xF8,              # jz wait
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xEC, 0xEE,              # in al, dx; out dx, al   (echo)
        0xEB, 0xF1,              # jmp wait
    ])
    image = bytearray(b"\xF4" * 0x10000)
    image[0xFF80:0xFF80 + len(code)] = code
    image[0xFFF0:0xFFF2] = bytes([0xEB, 0x8E])   # reset vector: jmp short 0xFF80
    return bytes(image)


def spew_bios() -> bytes:
    """A 64 KiB BIOS that writes 'x' to COM1 forever."""
    code = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x78, 0xEE, 0xEB, 0xFD])
    image = bytearray(b"\xF4" * 0x10000)
    image[0xFF80:0xFF80 + len(code)] = code
    image[0xFFF0:0xFFF2] = bytes([0xEB, 0x8E])
    return bytes(image)


@pytest.fixture
def spewing_bios(tmp_path) -> str:
    path = tmp_path / "spew-bios.bin"
    path.write_bytes(spew_bios())
    return str(path)


@pytest.fixture
def bios(tmp_path) -> str:
    path = tmp_path / "echo-bios.bin"
    path.write_bytes(echo_bios())
    return str(path)
