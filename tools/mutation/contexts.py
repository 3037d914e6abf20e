"""pytest plugin for the mutation map: coverage measured per test, in children too.

Loaded only by ``tools/mutation/run.py`` (``-p contexts``) while coverage.py runs the suite
with ``patch = subprocess``. Every line executed during a test's setup, call and teardown is
recorded under that test's node id, in the pytest process (``switch_context``) and in every
Python child the test starts: the workspace venv holds a ``.pth`` file (``CHILD_HOOK``) that
switches a child's context to ``CREDBRIDGE_MUTATION_TEST``, which this plugin sets. Most of
credbridge's tests drive the real ``credbridge`` command in a child process, so a map of the
pytest process alone would miss most of what they reach.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "CREDBRIDGE_MUTATION_TEST"
DURATIONS = "CREDBRIDGE_MUTATION_DURATIONS"

CHILD_HOOK = (
    "import os, sys; "
    "exec('try:\\n import coverage\\n c = coverage.Coverage.current()\\n"
    ' t = os.environ.get("' + ENV + '")\\n'
    " if c is not None and t: c.switch_context(t)\\nexcept Exception:\\n pass')\n"
)
"""The line of ``zz_credbridge_mutation.pth`` (after coverage's own ``a1_coverage.pth``)."""

_durations: dict[str, float] = {}


def _switch(nodeid: str) -> None:
    import coverage

    current = coverage.Coverage.current()
    if current is not None:
        current.switch_context(nodeid)
    os.environ[ENV] = nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _switch(item.nodeid)
    started = time.monotonic()
    yield
    _durations[item.nodeid] = time.monotonic() - started
    _switch("")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(DURATIONS)
    if target:
        Path(target).write_text(json.dumps(_durations, indent=0, sort_keys=True))
