"""Per-run cost that grows with the number of credentials stays linear and small: lookups by
name, rendering references, and the files a run opens (bench/bench_core.py has the timings;
these tests count operations, never time)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends.filestore import SWEPT_MARK, FileStore
from credbridge.core import Request, Session, load_config
from credbridge.core import reference as reference_module
from credbridge.core.config import CredentialSpec, Target
from credbridge.core.errors import UnsafePath
from credbridge.core.reference import parse_reference
from credbridge.core.secret import Secret
from support.strace import strace_calls


class CountedName(str):
    """A credential name that counts how often it is compared."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_credential_is_found_by_name_without_comparing_the_others() -> None:
    specs = tuple(
        CredentialSpec(CountedName(f"c{i}"), parse_reference("env:HOME")) for i in range(1000)
    )
    target = Target("app.service", "unit", "app.service", specs, "credstore")
    CountedName.compared = 0
    found = target.credential("c999")
    assert found is specs[-1]
    assert target.credential("missing") is None
    assert CountedName.compared <= 2


def test_the_first_of_two_credentials_with_one_name_is_found() -> None:
    first = CredentialSpec("c", parse_reference("env:A"))
    second = CredentialSpec("c", parse_reference("env:B"))
    target = Target("app.service", "unit", "app.service", (first, second), "credstore")
    assert target.credential("c") is first


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    original: Callable[..., Any] = getattr(reference_module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(reference_module, name, counted)
    return calls


def test_a_reference_is_rendered_once_however_often_it_is_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = parse_reference("generate:base64?bytes=32&id=app/key#sel%20ector")
    quotes = counting(monkeypatch, "quote")
    encodes = counting(monkeypatch, "urlencode")
    first = str(reference)
    once = (quotes[0], encodes[0])
    assert once[0] >= 1 and once[1] == 1
    assert [str(reference) for _ in range(5)] == [first] * 5
    assert (quotes[0], encodes[0]) == once
    assert parse_reference(first) == reference


# --------------------------------------------------------------------------- the store


def deliver_config(base: Path, count: int) -> Path:
    config = base / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{base / "store"}"\n[sinks.credstore]\ndirectory = "{base / "cs"}"\n'
        '[targets."bench.service".credentials]\n'
        + "".join(f's{i} = "generate:base64?bytes=32"\n' for i in range(count))
    )
    return config


def opens_of_runs(base: Path, count: int) -> list[int]:
    """open/openat/openat2 calls of a first, a second and a third deliver of ``count``."""
    config = deliver_config(base, count)
    argv = [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "deliver"]
    return [
        sum(1 for line in strace_calls("open,openat,openat2", *argv) if "resumed>" not in line)
        for _ in range(3)
    ]


def test_a_run_opens_few_files_per_credential(tmp_path: Path, tmpfs_dir: Path) -> None:
    """What a credential adds to a run, counted with strace: at most 10 opens on a first run
    (generate, persist, deliver) and 3 on a kept one (store, live file, staged file)."""
    (tmpfs_dir / "20").mkdir()
    (tmpfs_dir / "60").mkdir()
    small = opens_of_runs(tmpfs_dir / "20", 20)
    large = opens_of_runs(tmpfs_dir / "60", 60)
    first, kept_once, kept = ((b - a) / 40 for a, b in zip(small, large, strict=True))
    assert first <= 10
    # The first kept run after values were written also checks the store for temp files
    # of a crashed run, one directory per credential; later runs know it holds none.
    assert kept_once <= 4
    assert kept <= 3


def test_a_key_directory_replaced_by_a_symlink_while_held_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.create("t/a", Secret(b"a"))
    store.create("t/b", Secret(b"b"))
    assert store.read("t/b") == Secret(b"b")  # t/ is held open from here on
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "current").write_bytes(b"planted")
    shutil.rmtree(tmp_path / "store" / "t" / "b")
    os.symlink(planted, tmp_path / "store" / "t" / "b")
    with pytest.raises(UnsafePath, match=r"t/b: is a symlink"):
        store.read("t/b")
    os.unlink(tmp_path / "store" / "t" / "a" / "current")
    os.symlink(planted / "current", tmp_path / "store" / "t" / "a" / "current")
    with pytest.raises(UnsafePath, match=r"t/a/current: is a symlink"):
        store.read("t/a")


def test_a_key_directory_others_can_write_is_refused_while_held(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.create("t/a", Secret(b"a"))
    store.create("t/b", Secret(b"b"))
    assert store.read("t/a") == Secret(b"a")
    os.chmod(tmp_path / "store" / "t" / "b", 0o777)  # noqa: S103 - the hostile mode
    with pytest.raises(UnsafePath, match=r"t/b: owned by .* mode 0777"):
        store.read("t/b")


def test_a_store_replaced_during_a_run_is_walked_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    store.create("t/a", Secret(b"old"))
    os.rename(root, tmp_path / "moved")
    assert store.read("t/a") is None
    assert store.create("t/a", Secret(b"new")) == Secret(b"new")
    assert (root / "t" / "a" / "current").read_bytes() == b"new"
    assert (tmp_path / "moved" / "t" / "a" / "current").read_bytes() == b"old"


def test_temp_files_of_a_crashed_run_are_swept_also_from_a_store_marked_before(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    store.recover()
    assert (root / SWEPT_MARK).exists()
    store.create("t/a", Secret(b"a"))
    assert not (root / SWEPT_MARK).exists(), "a writer must clear the mark before a temp file"
    leftover = root / "t" / "a" / ".current.0123456789ab.tmp"
    leftover.write_bytes(b"half")
    FileStore(root).recover()
    assert not leftover.exists()
    assert (root / SWEPT_MARK).exists()
    (root / SWEPT_MARK).unlink()  # a store written by a credbridge before the mark
    leftover.write_bytes(b"half")
    FileStore(root).recover()
    assert not leftover.exists()


def test_credentials_sharing_a_store_key_get_values_wiped_apart(tmp_path: Path) -> None:
    """A value read from the store is handed out without a copy once; a second credential of
    the same key gets its own copy, so wiping one result leaves the other intact."""
    config_path = tmp_path / "credbridge.toml"
    config_path.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n[targets.app.credentials]\n'
        'one = "generate:hex?id=shared/key"\ntwo = "generate:hex?id=shared/key"\n'
    )
    config = load_config(config_path)
    requests = [
        Request(parse_reference(s.text), f"app/{s.name}") for s in config.target("app").credentials
    ]
    for _ in range(2):  # generated, then read from the store
        with Session(config) as session:
            results = session.resolve(requests)
        one, two = (results[r] for r in requests)
        assert isinstance(one, Secret) and isinstance(two, Secret)
        assert one == two and one is not two
        one.wipe()
        assert len(two.reveal()) == 64


def test_without_openat2_values_are_read_by_the_walk_with_the_same_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old kernel or a seccomp filter without openat2: the checked walk reads instead."""
    from credbridge.core import fsutil

    monkeypatch.setattr(fsutil, "_openat2_works", False)
    store = FileStore(tmp_path / "store")
    store.create("t/a", Secret(b"a"))
    store.create("t/b", Secret(b"b"))
    assert store.read("t/a") == Secret(b"a")
    assert store.read("t/missing") is None
    os.unlink(tmp_path / "store" / "t" / "b" / "current")
    os.symlink(
        tmp_path / "store" / "t" / "a" / "current", tmp_path / "store" / "t" / "b" / "current"
    )
    with pytest.raises(UnsafePath, match=r"t/b/current: is a symlink"):
        store.read("t/b")


def lock_acquisitions(lines: list[str]) -> dict[str, int]:
    """How often each lock file was taken (``flock(FD</path>, LOCK_EX...)`` in strace -y)."""
    taken: dict[str, int] = {}
    for line in lines:
        if "LOCK_EX" in line and " = 0" in line and (path := line.partition("<")[2]):
            name = path.partition(">")[0]
            taken[name] = taken.get(name, 0) + 1
    return taken


def test_each_lock_is_taken_once_per_run(tmp_path: Path, tmpfs_dir: Path) -> None:
    """A first run of 20 new credentials takes the store's write lock once, not once per value
    (and its run lock and the sink's lock once), and so does a later run that keeps them."""
    config = deliver_config(tmpfs_dir, 20)
    argv = [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "deliver"]
    for _ in range(2):
        taken = lock_acquisitions(strace_calls("flock", *argv))
        assert taken == {
            str(tmpfs_dir / "store" / ".lock"): 1,
            str(tmpfs_dir / "store" / ".credbridge.lock"): 1,
            str(tmpfs_dir / "cs" / ".credbridge.lock"): 1,
        }


def test_credentials_with_one_reference_text_share_one_parsed_reference() -> None:
    """Memory per credential: 10,000 credentials of `generate:base64?bytes=32` keep one
    parsed reference (with its locator and rendered text), not 10,000."""
    from credbridge.core.config import read_config

    config = read_config(
        {
            "targets": {
                f"app{t}.service": {
                    "credentials": {f"c{i}": "generate:base64?bytes=32" for i in range(3)}
                    | {"home": "env:HOME"}
                }
                for t in range(2)
            }
        }
    )
    specs = [spec for target in config.targets.values() for spec in target.credentials]
    generated = {id(spec.reference) for spec in specs if spec.name != "home"}
    homes = {id(spec.reference) for spec in specs if spec.name == "home"}
    assert len(generated) == 1 and len(homes) == 1


def test_a_canonical_reference_keeps_one_copy_of_its_text() -> None:
    reference = parse_reference("generate:base64?bytes=32")
    assert str(reference) is reference.text
    spelled = parse_reference("generate:base64?bytes=%33%32")
    assert str(spelled) == "generate:base64?bytes=32" and str(spelled) is not spelled.text
