"""Every child process this interpreter starts (argv and environment), recorded through an audit
hook: for the tests that check what reaches a child and what does not."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

_SPAWNED: list[tuple[list[str], dict[str, str]]] | None = None
_SPAWNED_LOCK = threading.Lock()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Records every child process this interpreter starts (argv and environment)."""
    if event == "subprocess.Popen" and _SPAWNED is not None:
        _executable, argv, _cwd, env = args
        with _SPAWNED_LOCK:
            _SPAWNED.append(([os.fsdecode(a) for a in argv], dict(env or {})))


sys.addaudithook(_audit)


@pytest.fixture
def spawned() -> Iterator[list[tuple[list[str], dict[str, str]]]]:
    global _SPAWNED
    _SPAWNED = []
    try:
        yield _SPAWNED
    finally:
        _SPAWNED = None
