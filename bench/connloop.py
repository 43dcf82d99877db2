"""The C connection load (bench/connloop.c), compiled once per source version.

The binary is cached under CACHE_DIR by the source's hash, so an edited source is rebuilt and
concurrent benchmarks never run a half-written file (built to a temporary name, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("connloop.c")
CACHE_DIR = Path("/var/cache/flowscope/bench")


def binary() -> Path:
    """The path of the compiled connloop for the current source; builds it when missing."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = CACHE_DIR / f"connloop-{digest}"
    if target.exists():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler: install gcc (apt-get install -y gcc)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(partial), str(SOURCE)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {SOURCE} failed:\n{proc.stderr}")
    partial.replace(target)
    return target
