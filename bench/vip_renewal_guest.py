"""Guest side of bench/vip_renewal.py (runs in the data-plane VM, as root, in a network
namespace of its own). Imported as ``bench.vip_renewal_guest`` by the VM's call server."""

from __future__ import annotations

import socket
import subprocess
import time

from lvs_operator.director.kernel.addresses import Renewal, Rtnl
from lvs_operator.director.vip import VIP_PROTO


def addresses(count: int, lifetime: int | None, rounds: int) -> dict[str, object]:
    """``count`` host addresses added (one batch) to a dummy interface of their own, with a
    ``lifetime`` (None: permanent), then ``rounds`` renewals of all of them (one batch each,
    as the agent's lifetime thread sends them): the seconds of each."""
    name = f"vr{count}x{lifetime or 0}"
    subprocess.run(["ip", "link", "add", name, "type", "dummy"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    try:
        index = socket.if_nametoindex(name)
        vips = [f"10.{40 + (lifetime or 0)}.{i // 250}.{1 + i % 250}" for i in range(count)]
        rt = Rtnl()
        t0 = time.monotonic()
        added = rt.add_addresses([Renewal(index, v, 32, 0, VIP_PROTO, lifetime) for v in vips])
        add = time.monotonic() - t0
        renewals, failed = [], 0
        for _ in range(rounds):
            t0 = time.monotonic()
            codes = rt.renew_addresses([Renewal(index, v, 32, 0, VIP_PROTO, 8) for v in vips])
            renewals.append(round(time.monotonic() - t0, 3))
            failed += sum(1 for c in codes if c)
        rt.close()
        return {"add": round(add, 3), "add_failed": sum(1 for c in added if c),
                "renewals": renewals, "renew_failed": failed}  # fmt: skip
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
