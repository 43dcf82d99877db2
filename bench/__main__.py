"""`make bench`: run every benchmark module in bench/ (each has a main())."""

import importlib
import pkgutil
import sys

import bench


def main() -> int:
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
