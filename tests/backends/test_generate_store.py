from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from credbridge.backends.filestore import FileStore
from credbridge.core import Mode, Pending, Request, Session, load_config, parse_reference, resolve
from credbridge.core.errors import UnsafePath
from credbridge.core.secret import Secret


def test_openssl_like_base64() -> None:
    value = resolve(["generate:base64?bytes=32"])["generate:base64?bytes=32"].reveal()
    assert len(value) == 44
    assert len(base64.b64decode(value, validate=True)) == 32


@pytest.mark.parametrize(
    ("ref", "check"),
    [
        ("generate:hex?bytes=16", lambda v: len(v) == 32 and int(v, 16) >= 0),
        ("generate:password?length=24&charset=alnum", lambda v: len(v) == 24 and v.isalnum()),
        ("generate:password?length=40&charset=digits", lambda v: len(v) == 40 and v.isdigit()),
        ("generate:uuid", lambda v: uuid.UUID(v.decode()).version == 4),
        ("generate:bytes?bytes=32", lambda v: len(v) == 32),
    ],
)
def test_generators(ref: str, check: object) -> None:
    value = resolve([ref])[ref].reveal()
    assert check(value)  # type: ignore[operator]


def test_generated_values_differ_between_calls() -> None:
    a = resolve(["generate:base64"])["generate:base64"]
    b = resolve(["generate:base64"])["generate:base64"]
    assert a != b


def config_with_store(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        '[targets.app.credentials]\na = "generate:base64"\nb = "generate:base64"\n'
        'shared1 = "generate:hex?id=shared/key"\n' + extra
    )
    return path


def test_persisted_per_credential_and_stable(tmp_path: Path) -> None:
    config = load_config(config_with_store(tmp_path))
    requests = [
        Request(parse_reference(s.text), f"app/{s.name}") for s in config.target("app").credentials
    ]
    with Session(config) as session:
        first = session.resolve(requests)
    with Session(config) as session:
        second = session.resolve(requests)
    assert first[requests[0]] == second[requests[0]]
    assert first[requests[0]] != first[requests[1]]  # same reference, two credentials, two values
    store = tmp_path / "store"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    current = store / "app" / "a" / "current"
    assert stat.S_IMODE(current.stat().st_mode) == 0o400
    assert current.read_bytes() == first[requests[0]].reveal()  # type: ignore[union-attr]
    assert (store / "shared" / "key" / "current").exists()


def test_dry_run_does_not_generate(tmp_path: Path) -> None:
    config = load_config(config_with_store(tmp_path))
    request = Request(parse_reference("generate:base64"), "app/a")
    with Session(config) as session:
        outcome = session.resolve([request], Mode.DRY_RUN)[request]
    assert isinstance(outcome, Pending)
    assert not (tmp_path / "store").exists()


def test_rotate_keeps_previous(tmp_path: Path) -> None:
    config = load_config(config_with_store(tmp_path))
    request = Request(parse_reference("generate:base64"), "app/a")
    with Session(config) as session:
        before = session.resolve([request])[request]
        session.rotate("app", "a")
        after = session.resolve([request])[request]
        previous = session.resolve_one("stored:app/a?version=previous")
    assert before != after
    assert previous == before


def test_concurrent_processes_agree_on_one_value(tmp_path: Path) -> None:
    """Two runs racing to generate the same key must end with one value, not two."""
    store = tmp_path / "store"
    script = (
        "import sys\n"
        "from credbridge.backends.filestore import FileStore\n"
        "from credbridge.core.secret import Secret\n"
        "import os\n"
        f"s = FileStore(__import__('pathlib').Path({str(store)!r}))\n"
        "v = s.create('race/k', Secret(os.urandom(16).hex().encode()))\n"
        "sys.stdout.write(v.reveal().decode())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) for _ in range(6)
    ]
    outputs = {p.communicate()[0] for p in procs}
    assert len(outputs) == 1
    assert FileStore(store).read("race/k") == Secret(outputs.pop())


def test_store_refuses_symlinked_key_dir(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.create("t/c", Secret(b"x"))
    os.symlink(tmp_path, tmp_path / "store" / "evil")
    with pytest.raises(UnsafePath, match=r"evil: is a symlink"):
        store.create("evil/c", Secret(b"y"))


def test_bad_store_keys_are_reference_errors(cli) -> None:  # type: ignore[no-untyped-def]
    for reference in ("stored:a b", "generate:base64?id=a%20b", "stored:a/../b"):
        result = cli("get", reference)
        assert result.returncode == 4, result.stderr
        assert b"invalid store key" in result.stderr
        assert b"Traceback" not in result.stderr


def test_rotate_with_a_broken_store_is_one_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "blocker").write_text("a file where the store directory should be")
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "blocker" / "store"}"\n[targets.app.credentials]\na = "generate:hex"\n'
    )
    result = cli("-c", str(config), "rotate", "app", "a")
    err = result.stderr.decode()
    assert result.returncode == 7, err
    assert "store key app/a" in err
    assert "Traceback" not in err


def test_the_file_store_lists_its_keys(tmp_path: Path) -> None:
    """Store.keys(): every key that has a current value, nested keys included, sorted."""
    store = FileStore(tmp_path / "store")
    assert store.keys() == []  # no store directory yet
    store.create("b.service/token", Secret(b"1"))
    store.create("a.service/db", Secret(b"2"))
    store.create("a.service/nested/key", Secret(b"3"))
    (tmp_path / "store" / "a.service" / "empty").mkdir()  # no value: not a key
    assert store.keys() == ["a.service/db", "a.service/nested/key", "b.service/token"]
