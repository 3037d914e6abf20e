"""Run one piece of guest work per Debian release, the releases side by side.

Every guest test runs on both systemd versions (:data:`~tests.guest.image.RELEASES`). The
slow parts, building an image and a host-guest run of several minutes, are independent per
release, so :func:`per_release` runs them in threads, at most :func:`guest_jobs` at once. The
whole suite still runs under one ``flock /tmp/credbridge-qemu.lock`` (docs/testing.md): the
lock keeps other test runs out, this module decides how many of this run's guests share the
cores.

    runs = per_release(lambda release: run_host_guest(ensure_host_guest(recipe(), release=release), ...))
    result = runs[release]          # a HostRun, or the exception that work raised
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from .image import RELEASES, GuestBuildError, GuestImage, Release, ensure_guest

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
