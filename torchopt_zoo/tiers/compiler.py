"""The system's C compiler, and the cache of what it built: the CPU kernels (``tiers/cpu.py``) and
the address tables' steady-state check (``tiers/host.py``).

``$CC`` (default ``cc``) compiles; libraries are kept in ``$TORCHOPT_ZOO_CACHE`` (default
``~/.cache/torchopt_zoo``) under a name the caller derives from everything the binary depends on,
so a library is built once per machine and reused by every process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def compiler() -> str:
    return os.environ.get("CC", "cc")


def available() -> bool:
    return shutil.which(compiler()) is not None


def cache_dir(kind: str) -> Path:
    root = os.environ.get("TORCHOPT_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torchopt_zoo")
    return Path(root) / kind


def build(src: str, flags: list[str], kind: str, key: str, libraries: tuple[str, ...] = ()) -> tuple[Path | None, str]:
    """Compile the C source ``src`` with ``flags``, linking ``libraries`` (``-lm`` style), into
    ``cache_dir(kind)/<key>.so`` (once; atomically, so concurrent processes may race):
    ``(path, "")``, or ``(None, what the compiler said)`` where it fails."""
    cache = cache_dir(kind)
    target = cache / f"{key}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            c_file, so_file = Path(tmp) / "source.c", Path(tmp) / "library.so"
            c_file.write_text(src)
            command = [compiler(), *flags, "-fPIC", "-shared", str(c_file), "-o", str(so_file), *libraries]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                return None, done.stderr[-2000:]
            os.replace(so_file, target)
    return target, ""
