"""credstore drop-ins under the real systemd 252 and 257 (PID 1 of the host guests, QEMU TCG;
Debian 12 and 13, the two guests booted side by side).

* An ``optional = true`` credential the source does not have: the unit starts without it (the
  drop-in's ``LoadCredential=`` points at an empty directory credbridge put there). Before,
  the drop-in's ``SetCredential=NAME:`` was "Invalid syntax" to 252 and the unit failed.
* The same credential when the source has it: the unit receives it, byte for byte.
* systemd's per-unit limit (the name's length plus the value's, 1 MiB in all): a delivery of
  exactly that size starts the unit; one byte more is refused by ``credbridge deliver``
  (exit 9) before anything is written, and by systemd itself when loaded by hand (243).

The in-guest driver is tests/guest/host_credentials.py; the image is the host guest's
(tests/guest/hostimage.py) with nothing added.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest.hostimage import HostGuestRecipe, ensure_host_guest, missing_for_host_guest  # noqa: E402
from guest.hostrun import HostRun, finished, run_host_guest  # noqa: E402
from guest.image import Release  # noqa: E402
from guest.parallel import outcome_of, per_release, release  # noqa: E402

__all__ = ["release"]  # the fixture, imported so pytest finds it here

MiB = 1 << 20
CONFIG = """
[store]
path = "/var/lib/credbridge"

[targets."opt-missing.service".credentials]
present = "file:/root/values/present"
maybe = { ref = "env:CREDBRIDGE_TEST_NOT_SET", optional = true }

[targets."opt-present.service".credentials]
maybe = { ref = "file:/root/values/maybe", optional = true }

[targets."limit-exact.service".credentials]
k = "file:/root/values/exact"

[targets."limit-over.service".credentials]
k = "file:/root/values/over"
"""


_SKIP = missing_for_host_guest("systemctl")
pytestmark = [pytest.mark.guest, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


def boot(release: Release) -> HostRun:
    image = ensure_host_guest(HostGuestRecipe(), release=release)
    payload = {
        "driver": (Path(_TESTS_DIR) / "guest" / "host_credentials.py").read_bytes(),
        "credbridge.toml": CONFIG.encode(),
    }
    return run_host_guest(image, payload, timeout=900)


@pytest.fixture(scope="module")
def runs() -> dict[Release, HostRun | Exception]:
    return per_release(boot)


@pytest.fixture(scope="module")
def run(runs: dict[Release, HostRun | Exception], release: Release) -> HostRun:
    result = finished(outcome_of(runs, release, "host guest"))
    assert result.events("crash") == [], result.describe()
    return result


def started(run: HostRun, unit: str) -> dict[str, Any]:
    (event,) = [e for e in run.events("start") if e["unit"] == unit]
    return event


def listing(event: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
    out = {}
    for line in event["listing"]:
        name, size, head = [*line.split(" "), ""][:3]
        out[name] = (int(size), base64.b64decode(head))
    return out


def test_the_guest_runs_its_releases_systemd(run: HostRun, release: Release) -> None:
    assert run.event("version")["systemd"].startswith(f"systemd {release.systemd} ")


def test_delivery_and_drop_ins(run: HostRun) -> None:
    deliver = run.event("deliver")
    assert deliver["rc"] == 0, deliver
    for install in run.events("install"):
        assert install["rc"] == 0, install
    text = run.event("dropin")["text"]
    assert "LoadCredential=maybe:/run/credstore/opt-missing.service/maybe" in text
    assert "SetCredential" not in text
    placeholder = run.event("placeholder")
    assert placeholder["is_dir"] is True and placeholder["entries"] == []


def test_a_missing_optional_credential_leaves_the_unit_startable(run: HostRun) -> None:
    event = started(run, "opt-missing.service")
    assert event["rc"] == 0, event
    assert listing(event) == {"present": (13, b"present-value")}


def test_a_present_optional_credential_reaches_the_unit(run: HostRun) -> None:
    event = started(run, "opt-present.service")
    assert event["rc"] == 0, event
    assert listing(event) == {"maybe": (13, b"maybe-is-here")}
    assert base64.b64decode(run.event("values")["present"]) == b"maybe-is-here"


def test_exactly_systemds_per_unit_total_starts_the_unit(run: HostRun) -> None:
    event = started(run, "limit-exact.service")
    assert event["rc"] == 0, event
    size, head = listing(event)["k"]
    assert len("k") + size == MiB
    assert head == b"e" * 64


def test_one_byte_more_is_refused_by_credbridge_and_by_systemd(run: HostRun) -> None:
    over = run.event("deliver-over")
    assert over["rc"] == 9, over
    assert over["stderr"].splitlines() == [
        "credbridge: error: limit-over.service: its 1 credentials take 1048577 bytes (names "
        "included), over systemd's limit of 1048576 bytes (1 MiB) per unit; the largest is "
        "'k' (1048576 bytes)"
    ]
    raw = started(run, "raw-over.service")
    assert raw["rc"] != 0, raw
    assert raw["listing"] is None
    assert "status=243/CREDENTIALS" in raw["journal"], raw["journal"]
