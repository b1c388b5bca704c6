"""Run a block with the calling thread in a network namespace (``ip netns`` name, under
/run/netns): /proc/sys/net and new sockets follow the thread's namespace. IPVS state is per
namespace, so tests run two directors in one VM; the agent itself runs in the node's
namespace (hostNetwork) and passes ``None``. A missing namespace is never created.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with the *calling thread* in ``netns`` (/proc/sys/net and new sockets
    follow the thread's namespace), and switch back after."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except BaseException:
        os.close(own)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
