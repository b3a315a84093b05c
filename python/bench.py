"""
Benchmark of a `qemu.machine` package: whichever one `import qemu.machine` finds.

    python bench.py QEMU_BINARY [--cycles 20] [--calls 2000] [--fleet 20]

Prints one JSON object: the package's path and
- launch_shutdown_ms: median of `launch()` + `shutdown()` of a `-machine none` VM;
- query_status_us: mean `qmp('query-status')` round trip;
- fleet_s: 20 VMs launched at once (one thread each), each asked `query-status`, all shut
  down at once; wall time.
scripts/python-bench runs it for QEMU's upstream package and for ours.
"""

import argparse
import json
import statistics
import threading
import time

import qemu.machine
from qemu.machine import QEMUMachine


def launch_shutdown(binary: str, cycles: int) -> float:
    times = []
    for _ in range(cycles):
        start = time.perf_counter()
        vm = QEMUMachine(binary, args=["-machine", "none"])
        vm.launch()
        vm.shutdown()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def query_status(binary: str, calls: int) -> float:
    with QEMUMachine(binary, args=["-machine", "none"]) as vm:
        vm.launch()
        for _ in range(50):
            vm.qmp("query-status")
        start = time.perf_counter()
        for _ in range(calls):
            vm.qmp("query-status")
        return (time.perf_counter() - start) / calls * 1e6


def fleet(binary: str, size: int) -> float:
    vms = [QEMUMachine(binary, args=["-machine", "none"]) for _ in range(size)]
    errors = []

    def each(vm: QEMUMachine, step: str) -> None:
        try:
            if step == "launch":
                vm.launch()
                assert vm.qmp("query-status")["return"]["status"] == "running"
            else:
                vm.shutdown()
        except Exception as err:  # pylint: disable=broad-except
            errors.append(err)

    start = time.perf_counter()
    for step in ("launch", "shutdown"):
        threads = [threading.Thread(target=each, args=(vm, step)) for vm in vms]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - start
    for vm in vms:
        vm.shutdown()
    if errors:
        raise errors[0]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--fleet", type=int, default=20)
    args = parser.parse_args()
    result = {
        "package": qemu.machine.__file__,
        "launch_shutdown_ms": round(launch_shutdown(args.binary, args.cycles), 1),
        "query_status_us": round(query_status(args.binary, args.calls), 1),
        "fleet_s": round(fleet(args.binary, args.fleet), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
