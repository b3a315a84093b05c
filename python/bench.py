"""
Benchmark of a `qemu.machine` package: whichever one `import qemu.machine` finds.

    python bench.py QEMU_BINARY [--cycles 20] [--calls 2000] [--fleet 20]

Prints one JSON object: the package's path and
- launch_shutdown_ms: median of `launch()` + `shutdown()` of a `-machine none` VM;
- query_status_us: mean `qmp('query-status')` round trip;
- fleet_s: 20 VMs at once, one thread each: launch, `query-status`, wait for all, shut
  down; wall time, median of 3 fleets (one fleet scatters by ±20% on a shared machine).
scripts/python-bench runs it for QEMU's upstream package and for ours.
"""

import argparse
import asyncio
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
    """
    One thread per VM: launch, query-status, wait until all are up, shut down. Each thread
    gets an asyncio event loop of its own first: upstream's QMP (qemu.qmp.legacy) needs
    one in every thread that makes a machine (ours does not care).
    """
    vms = [QEMUMachine(binary, args=["-machine", "none"]) for _ in range(size)]
    errors = []
    all_up = threading.Barrier(size)

    def life(vm: QEMUMachine) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            vm.launch()
            assert vm.qmp("query-status")["return"]["status"] == "running"
            all_up.wait(timeout=120)
            vm.shutdown()
        except Exception as err:  # pylint: disable=broad-except
            errors.append(err)
            all_up.abort()
            vm.shutdown()

    start = time.perf_counter()
    threads = [threading.Thread(target=life, args=(vm,)) for vm in vms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--fleet", type=int, default=20)
    parser.add_argument("--fleets", type=int, default=3)
    args = parser.parse_args()
    result = {
        "package": qemu.machine.__file__,
        "launch_shutdown_ms": round(launch_shutdown(args.binary, args.cycles), 1),
        "query_status_us": round(query_status(args.binary, args.calls), 1),
        "fleet_s": round(statistics.median(
            fleet(args.binary, args.fleet) for _ in range(args.fleets)), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
