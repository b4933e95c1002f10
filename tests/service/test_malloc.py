"""DFS_MALLOC_ARENA_MAX: glibc's malloc arenas capped from inside the process (service/malloc.py).

Each run is a fresh interpreter whose threads allocate at once; glibc's own ``malloc_info`` then
reports how many arenas (``<heap nr=...>``) exist.
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CHILD = r"""
import ctypes, ctypes.util, sys, tempfile, threading
from service.malloc import limit_malloc_arenas
cap = int(sys.argv[1])
applied = limit_malloc_arenas(cap)
barrier = threading.Barrier(8)
def churn():
    barrier.wait()
    for _ in range(2000):
        blocks = [bytearray(4096) for _ in range(16)]
        del blocks
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    handle = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, handle)
    libc.fclose(handle)
    print(applied, open(out.name).read().count("<heap nr="))
"""


def arenas_after_threads(cap: int) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cap)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    applied, heaps = done.stdout.split()
    return applied == "True", int(heaps)


@pytest.mark.skipif(not ctypes.util.find_library("c") or sys.platform != "linux", reason="glibc only")
def test_the_cap_bounds_the_arenas_that_contending_threads_create() -> None:
    applied, capped = arenas_after_threads(2)
    assert applied and 1 <= capped <= 2, capped
    not_applied, default = arenas_after_threads(0)  # 0: glibc's default, nothing set
    assert not not_applied and default > capped, (default, capped)
