"""A hostile local user and a careless environment (issue 7, items 2-5, 9, 10).

The attacker is a real other user (``nobody``) acting through real processes; symlinks are
planted for real; the file system is inspected afterwards (and traced with strace for fsync).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from support.harness import Setup
from support.strace import strace_calls

NOBODY = pwd.getpwnam("nobody")
PLANTED = b"planted-by-nobody-0123456789"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp that other users can reach (unlike tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="credbridge-hostile-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_tmpfs(tmpfs_dir: Path) -> Path:
    tmpfs_dir.chmod(0o755)
    return tmpfs_dir


def as_nobody(*argv: str) -> None:
    """Run a command as the attacker (a real process with nobody's uid)."""
    subprocess.run(list(argv), user=NOBODY.pw_uid, group=NOBODY.pw_gid, check=True)


def plant_value(store: Path, key: str) -> None:
    """What the owner of a store directory can do: put their own value in."""
    as_nobody(
        "/usr/bin/python3",  # the venv may not be readable by nobody
        "-c",
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(store)!r}) / {key!r} / 'current'\n"
        "p.parent.mkdir(parents=True, exist_ok=True)\n"
        f"p.write_bytes({PLANTED!r})\n",
    )


def cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "credbridge.core.cli", *args],
        capture_output=True,
        check=False,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def write_config(path: Path, store: Path, credstore: Path, extra: str = "") -> Path:
    path.write_text(
        f'[store]\npath = "{store}"\n'
        f'[sinks.credstore]\ndirectory = "{credstore}"\n{extra}\n'
        '[targets."app.service".credentials]\ngen01 = "generate:hex?bytes=16"\n'
    )
    return path


def no_value_anywhere(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert PLANTED not in path.read_bytes() or path.owner() == "nobody", path


# --------------------------------------------------------------------------- item 2: owners


@pytest.mark.parametrize("mode", [0o777, 0o700])
def test_store_owned_by_another_user_is_refused(
    open_dir: Path, open_tmpfs: Path, mode: int
) -> None:
    store = open_dir / "store"
    store.mkdir()
    os.chown(store, NOBODY.pw_uid, NOBODY.pw_gid)
    store.chmod(mode)
    plant_value(store, "app.service/gen01")
    config = write_config(open_dir / "c.toml", store, open_tmpfs / "cs")
    result = cli("-c", str(config), "deliver")
    err = result.stderr.decode()
    assert result.returncode == 13, err
    assert f"unsafe path {store}: owned by nobody (uid 65534), mode {mode:04o}" in err
    assert stat.S_IMODE(store.stat().st_mode) == mode, "an unsafe directory must not be fixed up"
    assert not (open_tmpfs / "cs" / "app.service").exists()


def test_credstore_owned_by_another_user_is_refused_before_generating(
    open_dir: Path, open_tmpfs: Path
) -> None:
    credstore = open_tmpfs / "cs"
    credstore.mkdir(mode=0o700)
    os.chown(credstore, NOBODY.pw_uid, NOBODY.pw_gid)
    config = write_config(open_dir / "c.toml", open_dir / "store", credstore)
    result = cli("-c", str(config), "deliver")
    err = result.stderr.decode()
    assert result.returncode == 13, err
    assert f"unsafe path {credstore}: owned by nobody (uid 65534), mode 0700" in err
    assert not (open_dir / "store").exists(), "values were generated before the refusal"
    assert os.listdir(credstore) == []


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_writable_ancestor_is_refused(open_dir: Path, open_tmpfs: Path, mode: int) -> None:
    """A directory on the way that others may write to: they could rename the store away."""
    shared = open_dir / "shared"
    shared.mkdir()
    if mode & stat.S_ISVTX:
        os.chown(shared, NOBODY.pw_uid, NOBODY.pw_gid)  # sticky, but not root's: still refused
    shared.chmod(mode)
    config = write_config(open_dir / "c.toml", shared / "store", open_tmpfs / "cs")
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 13, result.stderr
    assert f"unsafe path {shared}".encode() in result.stderr
    assert not (shared / "store").exists()


def test_root_owned_sticky_ancestors_are_fine(tmpfs_dir: Path) -> None:
    """/tmp and /dev/shm (1777, root) are where many users keep private directories."""
    with tempfile.TemporaryDirectory(dir="/tmp") as home:
        config = write_config(Path(home) / "c.toml", Path(home) / "store", tmpfs_dir / "cs")
        result = cli("-c", str(config), "deliver")
        assert result.returncode == 0, result.stderr
    assert (tmpfs_dir / "cs" / "app.service" / "gen01").exists()


def test_unit_dir_owned_by_another_user_is_refused(open_dir: Path, open_tmpfs: Path) -> None:
    units = open_dir / "units"
    units.mkdir()
    units.chmod(0o755)  # whatever the umask
    os.chown(units, NOBODY.pw_uid, NOBODY.pw_gid)
    config = write_config(open_dir / "c.toml", open_dir / "store", open_tmpfs / "cs")
    result = cli("-c", str(config), "unit", "app.service", "--install", "--unit-dir", str(units))
    assert result.returncode == 13, result.stderr
    assert b"owned by nobody (uid 65534), mode 0755" in result.stderr
    assert not (units / "app.service.d").exists()


def test_runtime_dir_owned_by_another_user_is_refused_before_generating(
    open_dir: Path, open_tmpfs: Path
) -> None:
    runtime_parent = open_tmpfs / "run"
    runtime_parent.mkdir(mode=0o700)
    os.chown(runtime_parent, NOBODY.pw_uid, NOBODY.pw_gid)
    config = vm_config(open_dir, runtime_parent / "vm")
    result = cli("-c", str(config), "launch", "vm")
    assert result.returncode == 13, result.stderr
    assert f"unsafe path {runtime_parent}: owned by nobody".encode() in result.stderr
    assert not (open_dir / "store").exists()


def vm_config(root: Path, runtime: Path) -> Path:
    config = root / "vm.toml"
    config.write_text(
        f"""
[store]
path = "{root / "store"}"
[targets.vm]
kind = "vm"
sink = "oem-strings"
[targets.vm.launcher]
type = "qemu"
kernel = "/boot/vmlinuz"
runtime_dir = "{runtime}"
[targets.vm.credentials]
db = "generate:hex"
"""
    )
    return config


# --------------------------------------------------------------------------- item 3: symlinks


def test_symlinked_key_dir_in_the_store_is_not_read_through(
    open_dir: Path, open_tmpfs: Path
) -> None:
    """The issue's case: store/app.service -> a directory holding gen01/current."""
    store = open_dir / "store"
    store.mkdir(mode=0o700)
    elsewhere = open_dir / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, NOBODY.pw_uid, NOBODY.pw_gid)
    plant_value(elsewhere, "gen01")
    (store / "app.service").symlink_to(elsewhere)
    config = write_config(open_dir / "c.toml", store, open_tmpfs / "cs")
    for command in (["deliver"], ["deliver", "--dry-run"], ["get", "stored:app.service/gen01"]):
        result = cli("-c", str(config), *command)
        err = result.stderr.decode()
        assert result.returncode == 13, (command, err)
        assert f"unsafe path {store / 'app.service'}: is a symlink (to {elsewhere})" in err
        assert PLANTED not in result.stdout
    assert not (open_tmpfs / "cs" / "app.service").exists()


@pytest.mark.parametrize("where", ["store", "store-parent", "credstore", "credstore-parent"])
def test_a_symlink_anywhere_along_a_path_is_refused(
    tmp_path: Path, tmpfs_dir: Path, where: str
) -> None:
    real_store_parent = tmp_path / "real"
    real_store_parent.mkdir()
    real_cs_parent = tmpfs_dir / "real"
    real_cs_parent.mkdir()
    store, credstore = real_store_parent / "store", real_cs_parent / "cs"
    if where == "store":
        (real_store_parent / "target").mkdir()
        store.symlink_to(real_store_parent / "target")
    elif where == "store-parent":
        (tmp_path / "link").symlink_to(real_store_parent)
        store = tmp_path / "link" / "store"
    elif where == "credstore":
        (real_cs_parent / "target").mkdir(mode=0o700)
        credstore.symlink_to(real_cs_parent / "target")
    else:
        (tmpfs_dir / "link").symlink_to(real_cs_parent)
        credstore = tmpfs_dir / "link" / "cs"
    config = write_config(tmp_path / "c.toml", store, credstore)
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 13, result.stderr
    assert b"is a symlink" in result.stderr
    assert not list((real_cs_parent).rglob("gen01"))


def test_dry_run_does_not_read_through_a_symlinked_target_directory(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    """A victim file equal to the secret used to make the plan say 'keep'."""
    config = write_config(tmp_path / "c.toml", tmp_path / "store", tmpfs_dir / "cs")
    assert cli("-c", str(config), "deliver").returncode == 0
    live = tmpfs_dir / "cs" / "app.service"
    value = (live / "gen01").read_bytes()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "gen01").write_bytes(value)
    shutil.rmtree(live)
    live.symlink_to(victim)
    result = cli("-c", str(config), "deliver", "--dry-run")
    assert result.returncode == 13, result.stdout + result.stderr
    assert b"keep" not in result.stdout
    assert f"unsafe path {live}: is a symlink (to {victim})".encode() in result.stderr


def test_unit_install_refuses_a_symlinked_drop_in_directory(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path / "store", tmpfs_dir / "cs")
    units, victim = tmp_path / "units", tmp_path / "victim"
    units.mkdir()
    victim.mkdir()
    (units / "app.service.d").symlink_to(victim)
    result = cli("-c", str(config), "unit", "app.service", "--install", "--unit-dir", str(units))
    assert result.returncode == 13, result.stderr
    assert b"app.service.d: is a symlink" in result.stderr
    assert list(victim.iterdir()) == []


def test_runtime_dir_behind_a_symlink_is_refused(tmp_path: Path, tmpfs_dir: Path) -> None:
    (tmpfs_dir / "real").mkdir(mode=0o700)
    (tmpfs_dir / "link").symlink_to(tmpfs_dir / "real")
    config = vm_config(tmp_path, tmpfs_dir / "link" / "vm")
    result = cli("-c", str(config), "launch", "vm")
    assert result.returncode == 13, result.stderr
    assert f"unsafe path {tmpfs_dir / 'link'}: is a symlink".encode() in result.stderr
    assert list((tmpfs_dir / "real").iterdir()) == []
    assert not (tmp_path / "store").exists()


def test_runtime_primitives_refuse_symlinks(tmpfs_dir: Path) -> None:
    from credbridge.core.errors import UnsafePath
    from credbridge.launchers.runtime import VmRuntime

    (tmpfs_dir / "real").mkdir(mode=0o700)
    (tmpfs_dir / "link").symlink_to(tmpfs_dir / "real")
    with pytest.raises(UnsafePath, match="is a symlink"):
        VmRuntime("vm", tmpfs_dir / "link" / "vm").__enter__()
    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        (rt.path / "sub").symlink_to(tmpfs_dir / "real")
        with pytest.raises(UnsafePath, match="is a symlink"):
            rt.write_file("sub/x", b"value")
    assert list((tmpfs_dir / "real").iterdir()) == []


# --------------------------------------------------------------------------- item 4: umask


def modes_below(base: Path, path: Path) -> dict[str, int]:
    found = {}
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        found[str(current.relative_to(base))] = stat.S_IMODE(os.lstat(current).st_mode)
    return found


def test_umask_000_creates_nothing_others_can_write(tmp_path: Path, tmpfs_dir: Path) -> None:
    store = tmp_path / "deep" / "er" / "store"
    credstore = tmpfs_dir / "deep" / "cs"
    units = tmp_path / "units" / "system"
    config = write_config(tmp_path / "c.toml", store, credstore)
    assert cli("-c", str(config), "deliver", umask=0).returncode == 0
    install = cli(
        "-c", str(config), "unit", "app.service", "--install", "--unit-dir", str(units), umask=0
    )
    assert install.returncode == 0, install.stderr
    assert set(modes_below(tmp_path, store / "app.service" / "gen01").values()) == {0o700}
    assert stat.S_IMODE((store / "app.service" / "gen01" / "current").stat().st_mode) == 0o400
    assert stat.S_IMODE((store / ".credbridge.lock").stat().st_mode) == 0o600
    assert set(modes_below(tmpfs_dir, credstore / "app.service").values()) == {0o700}
    assert stat.S_IMODE((credstore / ".credbridge.lock").stat().st_mode) == 0o600
    assert set(modes_below(tmp_path, units / "app.service.d").values()) == {0o755}
    assert stat.S_IMODE((units / "app.service.d" / "credbridge.conf").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- item 5: crashes


def test_store_temp_files_of_a_killed_run_are_removed(tmp_path: Path, tmpfs_dir: Path) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path / "store", tmpfs_dir / "cs")
    assert cli("-c", str(config), "deliver").returncode == 0
    key_dir = tmp_path / "store" / "app.service" / "gen01"
    # What a SIGKILL before the rename leaves: a full value in a 0400 temp file.
    leftover = key_dir / ".current.0123456789ab.tmp"
    leftover.write_bytes(b"a-whole-generated-value")
    leftover.chmod(0o400)
    unrelated = key_dir / "notes.tmp"
    unrelated.write_bytes(b"not ours")
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert unrelated.exists()


def test_sigterm_during_commit_finishes_it_and_leaves_no_old_set(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    setup = Setup(tmp_path, tmpfs_dir, 2)
    setup.write()
    assert setup.run("deliver").returncode == 0
    setup.static_file.write_bytes(b"static-2")
    result = setup.run("deliver", fault="credstore.commit.after-swap@1:term")
    assert result.returncode == 128 + 15, result.stderr
    assert b"terminated by SIGTERM" in result.stderr
    a, b = setup.target("a.service"), setup.target("b.service")
    assert a is not None and b is not None
    assert a["static"] == b"static-2", "the commit was split"
    assert not setup.leftovers(), "old sets left in .staging- directories"


def test_sigterm_while_staging_rolls_back_and_removes_the_staging(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    setup = Setup(tmp_path, tmpfs_dir, 2)
    setup.write()
    assert setup.run("deliver").returncode == 0
    before = setup.target("a.service")
    setup.static_file.write_bytes(b"static-2")
    result = setup.run("deliver", fault="write.written@3:term")
    assert result.returncode == 128 + 15, result.stderr
    assert setup.target("a.service") == before
    assert not setup.leftovers()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_mid_commit_is_held_until_every_target_is_swapped(
    tmp_path: Path, tmpfs_dir: Path, signum: signal.Signals
) -> None:
    """credbridge is paused (SIGSTOP, the test-only switch) right after the first of two
    targets was swapped; the signal arrives then. The commit must go on to the second
    target, remove both old sets, and only then act on the signal (exit 128+N)."""
    setup = Setup(tmp_path, tmpfs_dir, 2)
    setup.write()
    with setup.config.open("a") as config:  # b.service's section is last: b gets it too
        config.write(f'static = "file:{setup.static_file}"\n')
    assert setup.run("deliver").returncode == 0
    setup.static_file.write_bytes(b"static-2")
    process = setup.start("deliver", fault="credstore.commit.after-swap@1:stop")
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] != "T":
            assert time.monotonic() < deadline, "the run never reached the commit"
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        # Paused between the two swaps: one target new, the other old.
        a, b = setup.target("a.service"), setup.target("b.service")
        assert a is not None and b is not None
        assert {a["static"], b["static"]} == {b"static-1", b"static-2"}
        os.kill(process.pid, signum)
        os.kill(process.pid, signal.SIGCONT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signum, stderr
    said = "interrupted" if signum == signal.SIGINT else f"terminated by {signum.name}"
    # One line: nothing was rolled back (nor tried) after the complete commit.
    assert stderr.decode().splitlines() == [f"credbridge: {said}"]
    a, b = setup.target("a.service"), setup.target("b.service")
    assert a is not None and b is not None
    assert a["static"] == b["static"] == b"static-2", "the commit was split"
    assert not setup.leftovers(), "old sets left behind"


def strace(*argv: str) -> list[str]:
    return strace_calls("mkdirat,mkdir,fsync,rename,renameat,renameat2", *argv)


def test_every_new_entry_is_fsynced_up_to_the_store_root(tmp_path: Path, tmpfs_dir: Path) -> None:
    """Power loss after a delivery must not lose the generated value: each directory that got
    a new entry (a created directory or a renamed file) is fsynced after it."""
    store = tmp_path / "a" / "store"
    config = write_config(tmp_path / "c.toml", store, tmpfs_dir / "cs")
    lines = strace(sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "deliver")
    pending: list[str] = []
    created = 0
    for line in lines:
        if " = -1 " in line:
            continue
        changed = None
        if made := re.search(r"mkdirat\(\d+<([^>]*)>, \"([^\"]+)\"", line):
            changed, created = made.group(1), created + 1
        elif made := re.search(r"mkdir\(\"([^\"]+)\"", line):
            changed, created = os.path.dirname(made.group(1)), created + 1
        elif renamed := re.search(r"renameat2?\(\d+<[^>]*>, \"[^\"]+\", \d+<([^>]*)>", line):
            changed = renamed.group(1)
        elif renamed := re.search(r"rename\(\"[^\"]+\", \"([^\"]+)\"", line):
            changed = os.path.dirname(renamed.group(1))
        elif synced := re.search(r"fsync\(\d+<([^>]*)>\)", line):
            pending = [p for p in pending if p != synced.group(1)]
        if changed is not None and changed.startswith(str(tmp_path)):
            pending.append(changed)
    assert created >= 4, lines  # a, store, app.service, gen01
    assert pending == [], f"directories changed but never fsynced: {pending}"


def test_every_secret_file_is_fsynced_before_it_is_renamed_into_place(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    """Each file credbridge creates in the store and the credstore (a value, a temp file) is
    fsynced through its own descriptor before the rename that publishes it, and the
    credstore's staging directory and base directory are fsynced after their changes."""
    store = tmp_path / "store"
    credstore = tmpfs_dir / "cs"
    config = write_config(tmp_path / "c.toml", store, credstore)
    lines = strace_calls(
        "openat,fsync,fdatasync,rename,renameat,renameat2",
        sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "deliver",
    )  # fmt: skip
    created: list[str] = []
    synced: set[str] = set()
    unsynced_at_rename: list[str] = []
    for line in lines:
        if " = -1 " in line:
            continue
        if (made := re.search(r"openat\(.*O_CREAT.*\) = \d+<([^>]*)>", line)) and (
            made.group(1).startswith((str(store), str(credstore)))
        ):
            created.append(made.group(1))
        elif done := re.search(r"f(?:data)?sync\(\d+<([^>]*)>\)", line):
            synced.add(done.group(1))
        elif moved := re.search(r"renameat2?\(\d+<([^>]*)>, \"([^\"]+)\"", line):
            source = os.path.join(moved.group(1), moved.group(2))
            if source in created and source not in synced:
                unsynced_at_rename.append(source)
    # Lock files and the store's empty .swept mark hold no value.
    secret_files = [p for p in created if not p.endswith((".lock", "/.swept"))]
    assert len(secret_files) >= 2, lines  # the store's value and the credstore's file
    assert [p for p in secret_files if p not in synced] == []
    assert unsynced_at_rename == []
    staging = {p.rsplit("/", 1)[0] for p in secret_files if p.startswith(str(credstore))}
    assert staging and staging <= synced, "the staging directory was not fsynced"
    assert str(credstore) in synced, "the credstore directory was not fsynced after the swap"


# --------------------------------------------------------------------------- item 9


def test_persistent_credstore_is_refused_before_anything_is_generated(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path / "store", tmp_path / "cs")
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 9, result.stderr
    assert b"not on tmpfs" in result.stderr
    assert not (tmp_path / "store").exists(), "a value was generated and persisted anyway"


def test_persistent_runtime_dir_is_refused_before_anything_is_generated(tmp_path: Path) -> None:
    config = vm_config(tmp_path, tmp_path / "run" / "vm")
    result = cli("-c", str(config), "launch", "vm")
    assert result.returncode == 3, result.stderr
    assert b"not on tmpfs" in result.stderr
    assert not (tmp_path / "store").exists(), "a value was generated and persisted anyway"


# --------------------------------------------------------------------------- item 10


def test_libc_is_loaded_without_find_library() -> None:
    """find_library may run gcc/ld with credbridge's environment (no ldconfig: NixOS, musl)."""
    script = (
        "import ctypes.util\n"
        "def refuse(name):\n"
        "    raise AssertionError('find_library called for ' + name)\n"
        "ctypes.util.find_library = refuse\n"
        "import credbridge.core.fsutil, credbridge.launchers.runtime\n"
        "from pathlib import Path\n"
        "assert credbridge.core.fsutil.filesystem_type(Path('/dev/shm')) == 0x01021994\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


def test_security_doc_matches_the_child_environment_allow_list() -> None:
    from credbridge.core.process import ENV_ALLOW

    text = (REPO / "docs" / "security.md").read_text()
    assert "every child inherits" not in text
    for name in ENV_ALLOW:
        assert f"`{name}`" in text, f"docs/security.md does not list {name}"


def test_a_file_where_a_directory_should_be_is_one_line(tmp_path: Path, tmpfs_dir: Path) -> None:
    (tmpfs_dir / "blocker").write_text("not a directory")
    config = write_config(tmp_path / "c.toml", tmp_path / "store", tmpfs_dir / "blocker" / "cs")
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 9, result.stderr
    assert b"Traceback" not in result.stderr
    assert b"Not a directory" in result.stderr
    runtime = vm_config(tmp_path, tmpfs_dir / "blocker" / "vm")
    result = cli("-c", str(runtime), "launch", "vm")
    assert result.returncode == 3, result.stderr
    assert b"Traceback" not in result.stderr
