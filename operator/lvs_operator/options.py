"""Flags that default to an environment variable, checked like the flag itself.

argparse converts a *string* default with the flag's ``type`` when the flag is not given,
and reports a refusal as ``argument --flag: <message>`` with exit code 2. So a flag whose
default is the raw text of its variable gets the same check and the same message whether
the value came from the command line or from the environment; the types here name both.
(argparse checks ``choices`` only on the command line, hence :func:`one_of`.)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence


def env_text(var: str, env: Mapping[str, str] | None = None) -> str | None:
    """The variable's text; None when unset or empty (an empty variable counts as unset)."""
    value = (os.environ if env is None else env).get(var, "").strip()
    return value or None


def integer(var: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer (flag or env {var})"
            ) from None

    parse.__name__ = "integer"
    return parse


def number(var: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number (flag or env {var})"
            ) from None

    parse.__name__ = "number"
    return parse


def one_of(var: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not one of {', '.join(choices)} (flag or env {var})"
            )
        return text

    parse.__name__ = "choice"
    return parse
