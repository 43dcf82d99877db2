"""`make bench`: run every benchmark module in bench/ (each has a main())."""

import importlib
import pkgutil
import signal
import sys

import bench


def _stop(signum: int, _frame: object) -> None:
    # SIGTERM (e.g. from `timeout`) ends Python without running finally blocks: the benchmarks'
    # clean-up (lab down, brokers and acceptors ended) must run, so stop as Ctrl-C would
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    only = sys.argv[1:]
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if only and info.name not in only:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if hasattr(module, "main"):
            print(f"\n### bench.{info.name}", flush=True)
            module.main()
    return 0


sys.exit(main())
