"""The system's C and C++ compilers, and the cache of what they built: the CPU kernels
(``tiers/cpu.py``) and the address tables' steady-state check (``tiers/host.py``).

``$CC`` (default ``cc``) and ``$CXX`` (default ``c++``) compile; libraries are kept in
``$TORCHOPT_ZOO_CACHE`` (default ``~/.cache/torchopt_zoo``) under a name the caller derives from
everything the binary depends on, so a library is built once per machine and reused by every
process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def compiler(language: str = "c") -> str:
    """``$CC`` (default ``cc``) for C, ``$CXX`` (default ``c++``) for C++."""
    return os.environ.get("CC", "cc") if language == "c" else os.environ.get("CXX", "c++")


def available(language: str = "c") -> bool:
    return shutil.which(compiler(language)) is not None


def cache_dir(kind: str) -> Path:
    root = os.environ.get("TORCHOPT_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torchopt_zoo")
    return Path(root) / kind


def library_path(kind: str, key: str) -> Path:
    """Where :func:`build` keeps the library ``key`` of ``kind``."""
    return cache_dir(kind) / f"{key}.so"


def build(src: str, flags: list[str], kind: str, key: str, libraries: tuple[str, ...] = (),
          language: str = "c") -> tuple[Path | None, str]:
    """Compile the source ``src`` (C, or ``language="c++"``) with ``flags``, linking ``libraries``,
    into ``cache_dir(kind)/<key>.so`` (once; atomically, so concurrent processes may race):
    ``(path, "")``, or ``(None, what the compiler said)`` where it fails."""
    target = library_path(kind, key)
    cache = target.parent
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob("tmp*"):  # left by a process that ended while it compiled
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            c_file = Path(tmp) / ("source.c" if language == "c" else "source.cpp")
            so_file = Path(tmp) / "library.so"
            c_file.write_text(src)
            command = [compiler(language), *flags, "-fPIC", "-shared", str(c_file), "-o", str(so_file), *libraries]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                return None, done.stderr[-2000:]
            os.replace(so_file, target)
    return target, ""
