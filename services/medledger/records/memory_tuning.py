"""Keeps the service's resident memory flat under large transfers on glibc.

Every transfer allocates and frees 1 MiB pieces and 8 MiB S3 parts in several threads. glibc
gives each thread its own malloc arena and keeps freed blocks there, so the resident size
creeps up with the number of threads that ever touched a big buffer. Two arenas are enough
for a service whose hot path is one event loop plus a few worker threads. And glibc raises
its mmap threshold after the first large free, after which even 8 MiB S3 parts come from the
heap and fragment it; a fixed threshold keeps them mmapped, so a free returns them to the
system at once. 1 MiB pieces stay below it: they are reused at once, and an mmap per piece
costs a page fault per 4 KiB (measured: a third of download throughput).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
SERVICE_ARENAS = 2
# Above the 1 MiB transfer pieces, below the S3 parts (at least 5 MiB).
MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024


def limit_malloc_arenas(arenas: int = SERVICE_ARENAS) -> bool:
    """Cap glibc's malloc arenas and fix its mmap threshold (a no-op elsewhere); True if
    both took effect."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )
