"""What a command of the ``mailman`` command line is: a name, its flags, its run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True, slots=True)
class Call:
    """One invocation: the command line (its command first), environment and streams."""

    argv: Sequence[str]
    env: Mapping[str, str]
    out: TextIO
    err: TextIO


@dataclass(frozen=True, slots=True)
class Command:
    """``mailman NAME ...``: ``define`` gives its parser its flags (the environment is for
    help that shows values in effect), ``run`` does it and returns the exit code."""

    name: str
    help: str
    define: Callable[[argparse.ArgumentParser, Mapping[str, str]], None]
    run: Callable[[argparse.Namespace, Call], int]
