"""``lvs-operator demo``: the whole system on this machine, from a repository checkout.

The demo (``e2e/demo.py``, also ``make demo``) starts a local control plane and a VM with an
IPVS kernel, installs the operator from the repository's manifests and shows it at work. It
needs the checkout's scripts (hack/), manifests and test harness, so an installed package
alone cannot run it: this command finds the checkout (the one this package was installed from
in editable mode, or the current directory) and runs its demo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEMO = Path("e2e") / "demo.py"
REPO_URL_HINT = "git clone the lvs-operator repository, then run `make demo` in it"


def find_checkout(start: Path | None = None) -> Path | None:
    """The repository checkout holding e2e/demo.py: this package's own (editable install), or
    the current directory or one of its parents."""
    candidates = [Path(__file__).resolve().parents[2]]
    here = (start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    for root in candidates:
        if (root / DEMO).is_file() and (root / "hack" / "test-cluster").is_dir():
            return root
    return None


def run(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]) and find_checkout() is None:
        print("usage: lvs-operator demo [--once] [--down]\n\n" + (__doc__ or "").strip())
        return 0
    root = find_checkout()
    if root is None:
        print(
            "lvs-operator demo needs a checkout of the lvs-operator repository (its scripts, "
            f"manifests and VM harness), and none was found here.\n{REPO_URL_HINT}.",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    os.chdir(root)
    # exec, not a child: Ctrl-C must reach the demo alone, which then cleans up after itself
    os.execve(sys.executable, [sys.executable, str(root / DEMO), *argv], env)
    return 0  # not reached
