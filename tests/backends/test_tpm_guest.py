"""Credentials sealed to a TPM2: the credstore sink's ``encrypt = "tpm2"``/``"host+tpm2"``/
``"auto"`` under the real systemd 252 and 257 (PID 1 of the host guests, QEMU TCG) with a
software TPM (swtpm, tests/guest/swtpm.py) attached to each guest.

Per release, two QEMU runs of the host guest (the releases side by side):

1. with TPM A: ``credbridge deliver`` seals three values (``tpm2`` and ``host+tpm2`` bound to
   no PCR, ``auto``); a ``User=nobody`` unit per value gets it through
   ``LoadCredentialEncrypted=`` and prints what ``$CREDENTIALS_DIRECTORY`` held. No plaintext
   (raw or Base64) is left in the credstore, credbridge's store or the temporary directories.
2. with TPM B (another state directory: another TPM), the first guest's files put where the
   first guest had them: the units fail with systemd's credentials error and
   ``systemd-creds decrypt`` says why in one line.

The same two runs prove credbridge's own store sealed to the TPM2 (``[store] seal = "tpm2"``):
in run 1 a generated value is kept only as ciphertext (not in the store, the temporary
directories or anywhere on the raw root disk), reaches a ``User=nobody`` unit, and ``rotate``
keeps the old ciphertext as the previous value; in run 2 the first guest's store file cannot
be decrypted, ``deliver`` fails naming the store key, and no new value replaces it.

The guest boots SeaBIOS with ``-kernel`` (no EFI), so ``auto`` must fall back to the host key:
its file's header is the host key's, not the TPM's (docs/systemd.md says so).

The in-guest driver is tests/guest/tpm_scenario.py; the image is the host guest's
(tests/guest/hostimage.py: the TPM2 libraries systemd loads are in its base).
"""

from __future__ import annotations

import base64
import json
import os
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
from guest.swtpm import software_tpm  # noqa: E402

__all__ = ["release"]  # the fixture, imported so pytest finds it here

UNITS = ("tpm2.service", "both.service", "auto.service")
NO_PCR = "nopcr.service"
VALUES = {
    NO_PCR: b"bound to no PCR \x00\xff\n",
    "tpm2.service": b"tpm2-sealed\x00\xff value\n" + bytes(range(32)),
    "both.service": b"host+tpm2 sealed \xfe\x00\nsecond line\n",
    "auto.service": b"auto: the host key without EFI \x01\x02",
}
GENERATED = "gen.service"
STORE_CONFIG = f"""
[store]
seal = "tpm2"
tpm2_pcrs = "7"
[targets."{GENERATED}".credentials]
secret = "generate:base64?bytes=48"
"""
CONFIG = STORE_CONFIG + "".join(
    f"""
[targets."{unit}"]
sink = {{ type = "credstore", {setting} }}
[targets."{unit}".credentials]
secret = "file:/root/values/{unit}"
"""
    for unit, setting in (
        ("tpm2.service", 'encrypt = "tpm2", tpm2_pcrs = "7"'),
        ("both.service", 'encrypt = "host+tpm2", tpm2_pcrs = "7"'),
        ("auto.service", 'encrypt = "auto"'),
        (NO_PCR, 'encrypt = "tpm2", tpm2_pcrs = ""'),
    )
)


_SKIP = missing_for_host_guest("swtpm")
# In CI nothing is skipped: a missing prerequisite fails the fixture with its reason.
_SKIPPED = _SKIP is not None and os.environ.get("CI") != "true"
pytestmark = [pytest.mark.guest, pytest.mark.skipif(_SKIPPED, reason=_SKIP or "")]


def _plan(mode: str, data: dict[str, bytes], store: str | None = None) -> dict[str, bytes]:
    plan = {
        "mode": mode,
        "data": {u: base64.b64encode(v).decode() for u, v in data.items()},
        "store": store,
    }
    return {
        "driver": (Path(_TESTS_DIR) / "guest" / "tpm_scenario.py").read_bytes(),
        "credbridge.toml": CONFIG.encode(),
        "plan.json": json.dumps(plan).encode(),
    }


def both_runs(release: Release, work: Path) -> tuple[HostRun, HostRun]:
    image = ensure_host_guest(HostGuestRecipe(), release=release)
    with software_tpm(work / f"tpm-a-{release.test_id}") as tpm:
        sealed = finished(run_host_guest(image, _plan("seal", VALUES), timeout=900, extra_args=tpm))
    ciphertexts = {
        unit: base64.b64decode(text)
        for unit, text in sealed.event("sealed")["ciphertexts"].items()
        if unit in {"tpm2.service", "both.service"}
    }
    store = sealed.event("gen-store")["first"].get("current.cred")
    with software_tpm(work / f"tpm-b-{release.test_id}") as tpm:
        moved = finished(
            run_host_guest(image, _plan("foreign", ciphertexts, store), timeout=900, extra_args=tpm)
        )
    return sealed, moved


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[Release, tuple[HostRun, HostRun] | Exception]:
    if _SKIP is not None:
        pytest.fail(_SKIP)
    work = tmp_path_factory.mktemp("swtpm")
    results = per_release(lambda release: both_runs(release, work))
    # The whole consoles (every event, journals) for a person debugging a failure.
    keep = os.environ.get("CREDBRIDGE_KEEP_CONSOLE")
    for booted, result in results.items():
        if keep and not isinstance(result, Exception):
            for name, run in zip(("seal", "foreign"), result, strict=True):
                Path(f"{keep}.{booted.test_id}.{name}").write_text(run.console)
    return results


@pytest.fixture(scope="module")
def sealed(runs: dict[Release, tuple[HostRun, HostRun] | Exception], release: Release) -> HostRun:
    return outcome_of(runs, release, "host guest")[0]


@pytest.fixture(scope="module")
def moved(runs: dict[Release, tuple[HostRun, HostRun] | Exception], release: Release) -> HostRun:
    return outcome_of(runs, release, "host guest")[1]


def received(event: dict[str, Any]) -> dict[str, bytes]:
    lines = (event["output"] or "").splitlines()
    return {
        name: (value.encode() if name == "uid" else base64.b64decode(value))
        for name, value in (line.split(" ", 1) for line in lines)
    }


def test_the_guest_has_its_releases_systemd_and_a_tpm(sealed: HostRun, release: Release) -> None:
    facts = sealed.event("facts")
    print(f"{release.test_id}: {json.dumps(facts)}")
    assert facts["systemd"].startswith(f"systemd {release.systemd} "), facts
    assert facts["tpmrm0"] is True, facts


@pytest.mark.parametrize("unit", ["tpm2.service", "both.service", "auto.service"])
def test_a_nobody_unit_receives_the_exact_bytes(sealed: HostRun, unit: str) -> None:
    assert sealed.event("deliver")["rc"] == 0, sealed.event("deliver")
    (started,) = [e for e in sealed.events("start") if e["unit"] == unit]
    assert started["rc"] == 0, json.dumps(started, indent=1)
    nobody = b"65534"
    assert received(started) == {"secret": VALUES[unit], "uid": nobody}, json.dumps(started)


def test_no_plaintext_is_left_and_the_files_are_0400(sealed: HostRun) -> None:
    event = sealed.event("sealed")
    assert event["plaintext"] == [], event["plaintext"]
    assert set(event["modes"].values()) == {"0o400"}, event["modes"]
    for unit in UNITS:
        ciphertext = base64.b64decode(event["ciphertexts"][unit])
        assert VALUES[unit] not in ciphertext


def test_auto_without_efi_seals_with_the_host_key_only(sealed: HostRun) -> None:
    """Under SeaBIOS systemd sees no TPM2 in the firmware, so ``auto`` is ``host``: the header
    (the sealing key's id) is what ``systemd-creds encrypt --with-key=host`` writes, and not
    the TPM2 files' header."""
    event = sealed.event("sealed")
    headers = event["headers"]
    assert headers["auto.service"][:16] == event["host_header"][:16], event
    assert headers["tpm2.service"][:16] != event["host_header"][:16], event
    assert headers["both.service"][:16] not in {
        headers["tpm2.service"][:16],
        event["host_header"][:16],
    }, event


#: The last line of ``systemd-creds decrypt`` for a file sealed by another TPM.
FOREIGN_TPM_MESSAGE = {
    252: "Failed to load HMAC key in TPM: tpm:parameter(1):integrity check failed",
    257: "Failed to unseal secret using TPM2: ",
}


@pytest.mark.parametrize("unit", ["tpm2.service", "both.service"])
def test_another_tpm_cannot_decrypt_and_says_so(
    moved: HostRun, release: Release, unit: str
) -> None:
    (event,) = [e for e in moved.events("foreign") if e["unit"] == unit]
    start = event["start"]
    assert start["rc"] != 0, json.dumps(start, indent=1)
    # Nothing reached the unit (its stdout file holds only libtss2's complaints, if anything).
    assert not any(line.startswith("secret ") for line in (start["output"] or "").splitlines()), (
        json.dumps(start, indent=1)
    )
    assert "243/CREDENTIALS" in start["journal"], start["journal"]
    decrypt = event["decrypt"]
    assert decrypt["rc"] != 0, json.dumps(decrypt, indent=1)
    assert decrypt["stdout"] == "", json.dumps(decrypt, indent=1)
    message = decrypt["stderr"].strip().splitlines()
    assert message and message[-1].startswith(FOREIGN_TPM_MESSAGE[release.systemd]), decrypt


def test_a_key_bound_to_no_pcr_works_from_257_and_is_refused_before(
    sealed: HostRun, release: Release
) -> None:
    """``tpm2_pcrs = ""``: 257 unseals it for the unit; 252 would seal it and then fail the
    unit, so credbridge refuses it there, in one line, before writing anything."""
    event = sealed.event("deliver-nopcr")
    if release.systemd >= 257:
        assert event["rc"] == 0, event
        (started,) = [e for e in sealed.events("start") if e["unit"] == NO_PCR]
        assert received(started) == {"secret": VALUES[NO_PCR], "uid": b"65534"}, started
        return
    assert event["rc"] == 9, event
    assert event["stderr"].splitlines() == [
        f'credbridge: error: targets."{NO_PCR}".sink: tpm2_pcrs = "" (bound to no PCR) needs '
        "systemd 257 or later to be decrypted; /usr/bin/systemd-creds is systemd 252 (bind "
        'to PCRs, e.g. tpm2_pcrs = "7")'
    ], event
    assert sealed.event("sealed")["ciphertexts"].get(NO_PCR) is None


def _value(decrypted: dict[str, Any]) -> bytes:
    assert decrypted["rc"] == 0, decrypted
    return str(decrypted["stdout"]).encode()


def test_a_generated_value_is_kept_sealed_to_the_tpm2_and_delivered(sealed: HostRun) -> None:
    assert sealed.event("gen-deliver")["rc"] == 0, sealed.event("gen-deliver")
    store = sealed.event("gen-store")
    value = _value(store["decrypted_first"])
    assert len(base64.b64decode(value, validate=True)) == 48
    started = sealed.event("gen-start")
    assert started["rc"] == 0, json.dumps(started, indent=1)
    assert received(started) == {"secret": value, "uid": b"65534"}, json.dumps(started)
    assert list(store["first"]) == ["current.cred"], store["first"]
    # Sealed with the TPM2 key: the header systemd-creds writes for --with-key=tpm2 (the
    # listing is Base64 of the file, which is itself systemd-creds' Base64 text).
    header = base64.b64decode(store["first"]["current.cred"])[:16].decode()
    assert header == store["tpm2_header"][:16], store
    assert header != sealed.event("sealed")["host_header"][:16], store


def test_rotate_in_the_sealed_store_keeps_the_old_ciphertext_as_previous(sealed: HostRun) -> None:
    store = sealed.event("gen-store")
    assert sealed.event("gen-rotate")["rc"] == 0, sealed.event("gen-rotate")
    assert sealed.event("gen-redeliver")["rc"] == 0, sealed.event("gen-redeliver")
    after = store["after_rotate"]
    assert sorted(after) == ["current.cred", "previous.cred"], after
    assert after["previous.cred"] == store["first"]["current.cred"]
    first, second = _value(store["decrypted_first"]), _value(store["decrypted_second"])
    assert _value(store["decrypted_previous"]) == first
    assert second != first
    assert received(sealed.event("gen-restart"))["secret"] == second
    assert set(store["modes"].values()) == {"0o400"}, store["modes"]


def test_no_plaintext_of_the_sealed_store_is_on_the_disk(sealed: HostRun) -> None:
    """The store, /tmp and /var/tmp hold no copy (raw or Base64), and neither does the raw
    root disk (/dev/vda, read after sync with the page cache dropped): the scan finds a
    marker written to a file, and none of the two generated values."""
    store = sealed.event("gen-store")
    assert store["plaintext"] == [], store["plaintext"]
    assert store["disk"] == "/dev/vda", store["disk"]
    marker, *values = store["on_disk"]
    assert marker is True, store["on_disk"]
    assert values == [False, False, False, False], store["on_disk"]


def test_the_sealed_store_moved_to_another_tpm_fails_by_name_and_is_not_regenerated(
    sealed: HostRun, moved: HostRun, release: Release
) -> None:
    event = moved.event("gen-foreign")
    deliver = event["deliver"]
    assert deliver["rc"] == 6, json.dumps(deliver, indent=1)
    lines = deliver["stderr"].splitlines()
    prefix = (
        f"credbridge: error: {GENERATED}/secret: generate:base64?bytes=48: forbidden: "
        f"store key {GENERATED}/secret: current.cred cannot be decrypted on this machine "
        f"(systemd-creds decrypt: {FOREIGN_TPM_MESSAGE[release.systemd]}"
    )
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    assert lines[0].endswith("and no new value is generated in its place"), lines
    # The store holds exactly the file that was put there; nothing was delivered.
    assert event["store"] == {"current.cred": sealed.event("gen-store")["first"]["current.cred"]}
    assert event["delivered"] is False, event
