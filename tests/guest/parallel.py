"""Run one piece of guest work per Debian release, the releases side by side.

Every guest test runs on both systemd versions (:data:`~tests.guest.image.RELEASES`). The
slow parts, building an image and a host-guest run of several minutes, are independent per
release, so :func:`per_release` runs them in threads, at most :func:`guest_jobs` at once. The
whole suite still runs under one ``flock /tmp/credbridge-qemu.lock`` (docs/testing.md): the
lock keeps other test runs out, this module decides how many of this run's guests share the
cores.

    runs = per_release(lambda release: run_host_guest(ensure_host_guest(recipe(), release=release), ...))
    result = runs[release]          # a HostRun, or the exception that work raised

A test that boots in its body (one boot per release variant) hands the boot to
:func:`side_by_side`, so its two variants' guests run at once instead of one after the other.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from .image import RELEASES, GuestBuildError, GuestImage, Release, ensure_guest, release_id

JOBS_ENV = "CREDBRIDGE_TEST_GUEST_JOBS"
#: QEMU's TCG threads per guest that keep a core busy (``-smp 2``, but a guest booting is
#: mostly one busy vCPU and the I/O thread): two guests fit on two cores, measured in
#: docs/testing.md.
CORES_PER_GUEST = 1

T = TypeVar("T")


def guest_jobs(releases: int = len(RELEASES)) -> int:
    """How many guests of this run may boot at once: ``$CREDBRIDGE_TEST_GUEST_JOBS`` or one
    per :data:`CORES_PER_GUEST` cores, never more than there are releases."""
    configured = os.environ.get(JOBS_ENV, "")
    if configured.isdigit() and int(configured) > 0:
        wanted = int(configured)
    else:
        wanted = (os.cpu_count() or 1) // CORES_PER_GUEST
    return max(1, min(wanted, releases))


def per_release(
    work: Callable[[Release], T], releases: Sequence[Release] = RELEASES
) -> dict[Release, T | Exception]:
    """``work(release)`` for each release, :func:`guest_jobs` at a time; an exception is
    returned in place of its release's result (the test of that release reports it)."""
    results: dict[Release, T | Exception] = {}
    lock = threading.Lock()

    def one(release: Release) -> None:
        try:
            outcome: T | Exception = work(release)
        except Exception as error:  # reported by the caller, per release
            outcome = error
        with lock:
            results[release] = outcome

    with ThreadPoolExecutor(max_workers=guest_jobs(len(releases))) as pool:
        list(pool.map(one, releases))
    return {release: results[release] for release in releases}


@functools.cache
def probe_guests() -> dict[Release, GuestImage | Exception]:
    """Both probe guests (:func:`~tests.guest.image.ensure_guest`), built side by side once
    per test run."""
    return per_release(lambda release: ensure_guest(release=release))


def probe_guest(release: Release) -> GuestImage:
    """The probe guest of ``release`` for a fixture: a build failure fails the test (an error,
    never a skip)."""
    return outcome_of(probe_guests(), release, "guest image")


def outcome_of(results: Mapping[Release, T | Exception], release: Release, what: str) -> T:
    """``release``'s result of :func:`per_release` for a fixture: a build failure fails the
    test with ``what`` named (an error, never a skip); any other exception is re-raised."""
    result = results[release]
    if isinstance(result, GuestBuildError):
        pytest.fail(f"the {release.suite} {what} cannot be built: {result}")
    if isinstance(result, Exception):
        raise result
    return result


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def release(request: pytest.FixtureRequest) -> Release:
    """Each Debian release in turn, for the fixtures that pick its result of
    :func:`per_release` (import it into the test module for pytest to find it)."""
    return request.param  # type: ignore[no-any-return]


_side_by_side: dict[str, dict[Release, object]] = {}


def side_by_side(
    request: pytest.FixtureRequest, release: Release, work: Callable[[Release, Path], T]
) -> T:
    """``work(release, tmp)`` of a test that runs once per release, the releases side by side.

    The first of a test's release variants to run (``test_x[systemd252]``) runs the work of
    every variant the session selected at once (:func:`per_release`: two guests on two cores
    instead of one after the other) and waits for all of them, so nothing of one test runs
    on into the next; each variant then gets its own release's result, or the exception its
    work raised (an assertion inside ``work`` fails that release's variant). ``tmp`` is a
    fresh private directory on tmpfs for each release, removed after the work: the test's own
    ``tmp_path``/``tmpfs_dir`` belong to one variant only.
    """
    key = request.node.nodeid.replace(release.test_id, "{release}")
    if key not in _side_by_side:
        selected = {item.nodeid for item in request.session.items}
        releases = [r for r in RELEASES if key.replace("{release}", r.test_id) in selected]
        # The session's tmpfs directory (tests/conftest.py checks that nothing is left there).
        parent = Path(request.getfixturevalue("tmpfs_dir")).parent
        _side_by_side[key] = dict(per_release(lambda r: _in_private_dir(work, r, parent), releases))
    outcomes = _side_by_side[key]
    outcome = outcomes.pop(release)
    if not outcomes:
        del _side_by_side[key]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome  # type: ignore[return-value]


def _in_private_dir(work: Callable[[Release, Path], T], release: Release, parent: Path) -> T:
    # As short as tmpfs_dir's own name: the launchers' socket paths below it must fit sun_path.
    tmp = Path(tempfile.mkdtemp(prefix="side-", dir=parent))
    try:
        return work(release, tmp)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
