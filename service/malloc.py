"""glibc's malloc arenas, capped for a long-running server (``DFS_MALLOC_ARENA_MAX``).

glibc gives threads that contend for the allocator arenas of their own, up to 8 per core, and an
arena keeps what was freed in it for reuse. This server's threads (decoding, face finding, crops,
one batcher per model) allocate and free frame-sized buffers all day, so each arena settles at its
own high-water mark: on the 2-core machine, with five models at 4 clients, 2.47-2.68 GB of server
RSS with glibc's default against 2.26-2.3 GB with two arenas, at the same throughput (bench/e2e.py
with ``--env MALLOC_ARENA_MAX=2``). The environment variable works only if set before the process
starts; ``mallopt`` does the same from inside, before the app's threads exist, which is where
:func:`limit_malloc_arenas` is called (``service.app.create_app``, once per worker process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: leave glibc's default). False where there is no glibc."""
    if count <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to cap
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_ARENA_MAX, count) != 1:
        log.warning("mallopt(M_ARENA_MAX, %d) was refused; glibc's default arenas stay", count)
        return False
    return True
