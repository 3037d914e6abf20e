"""What the file-system primitives tell a user when they refuse: exact words, real errnos,
the pid that holds a lock (mutants of core/fsutil.py that the end-to-end tests let through)."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from credbridge.core.errors import LockUnavailable, UnsafePath
from credbridge.core.fsutil import (
    LockWait,
    atomic_write,
    check_dir,
    check_path,
    ensure_private_dir,
    exchange_at,
    filesystem_type,
    is_memory_backed,
    is_temp_name,
    locked,
    opened_dir,
    read_private_file,
    remove_tree,
    resolve_owner,
    temp_name,
    write_new_file,
)
from credbridge.launchers.runtime import VmRuntime

NOBODY = pwd.getpwnam("nobody")


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o757, "others"), (0o775, "its group"), (0o777, "its group and others")],
)
def test_a_writable_directory_is_refused_naming_who_can_write(
    tmp_path: Path, mode: int, who: str
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(UnsafePath) as refused:
        check_dir(str(directory), directory.stat(), ancestor=False)
    assert str(refused.value) == (
        f"unsafe path {directory}: owned by root (uid 0), mode {mode:04o}: writable by {who}; "
        "check its contents, then remove group/other write permission (chmod go-w)"
    )


def test_a_directory_of_another_user_names_whom_root_trusts(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the suite runs as root"
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(UnsafePath) as refused:
        check_dir(str(directory), directory.stat(), ancestor=False)
    assert str(refused.value) == (
        f"unsafe path {directory}: owned by nobody (uid {NOBODY.pw_uid}), mode 0700; "
        "credbridge trusts only directories owned by root"
    )


def test_a_sticky_ancestor_of_root_is_trusted_only_as_an_ancestor(tmp_path: Path) -> None:
    directory = tmp_path / "sticky"
    directory.mkdir()
    directory.chmod(0o1777)
    check_dir(str(directory), directory.stat(), ancestor=True)
    with pytest.raises(UnsafePath, match="writable by its group and others"):
        check_dir(str(directory), directory.stat(), ancestor=False)


def test_failed_system_calls_report_their_real_errno(tmp_path: Path) -> None:
    """The libc calls made through ctypes keep errno: a missing path is ENOENT, not 'Success'."""
    present = tmp_path / "present"
    present.mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileNotFoundError) as swapped:
            exchange_at(fd, "present", "missing")
    finally:
        os.close(fd)
    assert swapped.value.errno == errno.ENOENT
    assert swapped.value.strerror == os.strerror(errno.ENOENT)
    with pytest.raises(FileNotFoundError) as probed:
        filesystem_type(tmp_path / "missing")
    assert probed.value.errno == errno.ENOENT


def take(lock: Path, wait: LockWait) -> None:
    with locked(lock, wait=wait):
        pass


def test_a_lock_held_elsewhere_names_the_pid_holding_it(tmp_path: Path) -> None:
    directory = tmp_path / "base"
    directory.mkdir(mode=0o700)
    lock = directory / ".credbridge.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from credbridge.core.fsutil import locked
                with locked(Path({str(lock)!r})):
                    print("held", flush=True)
                    sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert lock.read_bytes() == f"{holder.pid}\n".encode()
        with pytest.raises(LockUnavailable) as busy, locked(lock, wait=LockWait(timeout=0)):
            pass
        assert str(busy.value) == (
            f"{lock} is locked by another credbridge run (pid {holder.pid}); "
            "not waiting (--no-wait)"
        )
        notices: list[str] = []
        waiting = LockWait(timeout=0.3, notify_after=0.05, notify=notices.append)
        with pytest.raises(LockUnavailable, match=r"gave up after 0\.3s \(--wait-lock\)"):
            take(lock, waiting)
        assert notices == [
            f"waiting for {lock}, held by credbridge pid {holder.pid} "
            "(--wait-lock SECONDS or --no-wait to limit)"
        ]
        notices.clear()
        with pytest.raises(LockUnavailable):
            take(lock, LockWait(timeout=0.2, notify_after=30, notify=notices.append))
        assert notices == [], "told of a wait shorter than notify_after"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    with locked(lock, wait=LockWait(timeout=0)):
        assert lock.read_bytes() == f"{os.getpid()}\n".encode()
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_created_directories_get_their_own_modes_whatever_the_umask(tmp_path: Path) -> None:
    """The last directory gets ``mode``, the parents made on the way ``parents_mode``."""
    old = os.umask(0o077)
    try:
        with opened_dir(tmp_path / "a" / "b" / "c", create=True, mode=0o750, parents_mode=0o711):
            pass
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("a", "a/b", "a/b/c")}
    assert modes == {"a": 0o711, "a/b": 0o711, "a/b/c": 0o750}


def test_an_existing_private_directory_gets_its_mode_back(tmp_path: Path) -> None:
    """A directory of ours that is merely readable by others (0755: nobody could plant
    anything) is narrowed to the mode asked for, not refused and not left as it was."""
    directory = tmp_path / "store"
    directory.mkdir()
    directory.chmod(0o755)
    ensure_private_dir(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_vm_runtime_directory_and_its_new_parents_are_0700_whatever_the_umask(
    tmpfs_dir: Path,
) -> None:
    old = os.umask(0)
    try:
        with VmRuntime("vm", tmpfs_dir / "a" / "b" / "vm") as runtime:
            modes = {
                name: stat.S_IMODE((tmpfs_dir / name).stat().st_mode)
                for name in ("a", "a/b", "a/b/vm")
            }
            assert runtime.path == tmpfs_dir / "a" / "b" / "vm"
    finally:
        os.umask(old)
    assert modes == {"a": 0o700, "a/b": 0o700, "a/b/vm": 0o700}


def test_owner_and_group_resolve_to_ids_and_unset_means_unchanged() -> None:
    assert resolve_owner(None, None) == (-1, -1)
    assert resolve_owner("nobody", None) == (NOBODY.pw_uid, -1)
    assert resolve_owner(None, "0") == (-1, 0)
    assert resolve_owner("1234", "nogroup") == (1234, grp.getgrnam("nogroup").gr_gid)


def test_files_and_directories_keep_our_owner_unless_told_otherwise(tmp_path: Path) -> None:
    """The helpers plugins use (atomic_write, write_new_file, ensure_private_dir): no owner or
    group given means ours; a group alone changes only the group."""
    ours = (os.geteuid(), os.getegid())
    atomic_write(tmp_path / "atomic", b"value")
    write_new_file(tmp_path / "new", b"value")
    ensure_private_dir(tmp_path / "dir")
    for name in ("atomic", "new", "dir"):
        info = (tmp_path / name).stat()
        assert (info.st_uid, info.st_gid) == ours, name
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o400
    group = grp.getgrnam("nogroup").gr_gid
    atomic_write(tmp_path / "grouped", b"value", mode=0o440, gid=group)
    info = (tmp_path / "grouped").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (ours[0], group, 0o440)


def test_reading_a_secret_file_follows_no_symlink_and_opens_no_fifo(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"value")
    (tmp_path / "real").chmod(0o400)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_private_file(tmp_path / "real") == b"value"
    with pytest.raises(UnsafePath, match=r"link: is a symlink \(to .*real\)"):
        read_private_file(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo", 0o600)
    # Without O_NONBLOCK, opening a FIFO nobody writes to never returns: run it in a child.
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from credbridge.core.fsutil import read_private_file\n"
            "try:\n"
            f"    read_private_file(Path({str(tmp_path / 'fifo')!r}))\n"
            "except OSError as error:\n"
            "    print(error.strerror); sys.exit(3)\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (reader.returncode, reader.stdout) == (3, "not a regular file\n")


def test_check_path_refuses_a_sticky_directory_at_the_end_of_the_path(tmp_path: Path) -> None:
    """/tmp-like directories are fine on the way, never as the directory itself."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    check_path(sticky / "store")
    with pytest.raises(UnsafePath, match="writable by its group and others"):
        check_path(sticky)


def test_a_short_wait_for_a_lock_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """By default a run tells of a wait only after a moment (1 s): a lock released sooner is
    taken silently."""
    lock = tmp_path / ".credbridge.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path\n"
            "from credbridge.core.fsutil import locked\n"
            f"with locked(Path({str(lock)!r})):\n"
            "    print('held', flush=True); time.sleep(0.3)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    with caplog.at_level("DEBUG"), locked(lock):
        pass
    assert holder.wait(timeout=30) == 0
    assert [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()] == []


def test_a_new_secret_file_is_private_from_its_creation_whatever_the_umask(
    tmp_path: Path,
) -> None:
    """Embedded under a umask of 022 (the API sets none), the file is 0600 from the moment it
    exists: the value is written before its final mode is set. The writer is stopped right
    after the create (the fault hook's ``stop``) and the file looked at from outside."""
    code = (
        "import os; from pathlib import Path\n"
        "from credbridge.core.fsutil import write_new_file\n"
        "os.umask(0o022)\n"
        f"write_new_file(Path({str(tmp_path / 'secret')!r}), b'value', mode=0o440)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-X", "credbridge-fault=write.created@1:stop", "-c", code]
    )
    try:
        _, status = os.waitpid(writer.pid, os.WSTOPPED)
        assert os.WIFSTOPPED(status)
        assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    assert writer.wait(timeout=30) == 0
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o440


def test_an_owner_with_uid_1_is_applied(tmp_path: Path) -> None:
    """uid 1 (``daemon`` on Debian) is an owner like any other, not a 'leave unchanged'."""
    write_new_file(tmp_path / "daemon", b"value", uid=1)
    assert (tmp_path / "daemon").stat().st_uid == 1


def test_what_a_user_other_than_root_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as uid 1000, credbridge trusts root's directories and its own, and root's sticky
    /tmp on the way; not another user's (the suite runs as root, so the euid is stood in)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    check_dir("/", os.stat("/"), ancestor=True)
    check_dir(str(tmp_path), tmp_path.stat(), ancestor=False)  # root's
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    check_dir(str(sticky), sticky.stat(), ancestor=True)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    os.chown(mine, 1000, 1000)
    check_dir(str(mine), mine.stat(), ancestor=False)
    os.chown(sticky, 1000, 1000)
    check_dir(str(sticky), sticky.stat(), ancestor=True)  # a sticky directory of its own
    os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(UnsafePath) as refused:
        check_dir(str(mine), mine.stat(), ancestor=False)
    try:
        user = f"{pwd.getpwuid(1000).pw_name} (uid 1000)"
    except KeyError:
        user = "uid 1000"
    assert str(refused.value).endswith(f"trusts only directories owned by root or by {user}")


def test_a_new_directory_is_private_from_its_creation_under_umask_0(tmp_path: Path) -> None:
    """Between mkdir and its fchmod, nobody else may write into a new directory (they could
    plant an entry): it is created 0700 even where the umask is 0 (the API sets none)."""
    code = (
        "import os; from pathlib import Path\n"
        "from credbridge.core.fsutil import ensure_private_dir\n"
        "os.umask(0)\n"
        f"ensure_private_dir(Path({str(tmp_path / 'new')!r}), mode=0o750)\n"
    )
    maker = subprocess.Popen([sys.executable, "-X", "credbridge-fault=mkdir@1:stop", "-c", code])
    try:
        _, status = os.waitpid(maker.pid, os.WSTOPPED)
        assert os.WIFSTOPPED(status)
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    finally:
        os.kill(maker.pid, signal.SIGCONT)
    assert maker.wait(timeout=30) == 0
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750


def test_ensure_private_dir_applies_a_group_alone(tmp_path: Path) -> None:
    group = grp.getgrnam("nogroup").gr_gid
    ensure_private_dir(tmp_path / "new", gid=group)
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    ensure_private_dir(existing, gid=group)
    for path in (tmp_path / "new", existing):
        assert (path.stat().st_uid, path.stat().st_gid) == (0, group)


def test_ramfs_counts_as_memory(tmp_path: Path) -> None:
    mount = tmp_path / "ramfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount)], check=True)
    try:
        assert is_memory_backed(mount / "credstore")
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert not is_memory_backed(disk_dir_path())


def disk_dir_path() -> Path:
    return Path("/var/tmp")


@pytest.mark.parametrize(
    ("name", "temp"),
    [
        (".current.0123456789ab.tmp", True),
        ("current.0123456789ab.tmp", False),  # no leading dot: never one of ours
        (".current.0123456789ab.txt", False),
        (".current.0123456789a.tmp", False),
        (".current.zzzzzzzzzzzz.tmp", False),
    ],
)
def test_only_atomic_writes_own_temp_names_count_as_leftovers(name: str, temp: bool) -> None:
    assert is_temp_name(name) is temp


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_writable_ancestor_of_root_without_the_sticky_bit_is_refused(
    tmp_path: Path, mode: int
) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(UnsafePath, match="writable by"):
        check_dir(str(directory), directory.stat(), ancestor=True)


def test_also_trust_covers_the_last_directory_only(tmp_path: Path) -> None:
    """A credstore target handed to a service user is trusted; a parent of theirs is not."""
    theirs = tmp_path / "theirs"
    (theirs / "inner").mkdir(parents=True, mode=0o700)
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(theirs / "inner", NOBODY.pw_uid, NOBODY.pw_gid)
    with opened_dir(theirs, also_trust=(NOBODY.pw_uid,)):
        pass
    with (
        pytest.raises(UnsafePath, match=f"unsafe path {theirs}: owned by nobody"),
        opened_dir(theirs / "inner", also_trust=(NOBODY.pw_uid,)),
    ):
        pass


@pytest.mark.parametrize(("uid", "gid"), [(1, -1), (-1, 1), (-1, 0), (1, 1)])
def test_ensure_private_dir_hands_over_owner_and_group_including_ids_0_and_1(
    tmp_path: Path, uid: int, gid: int
) -> None:
    """Ids 0 and 1 (root's group, daemon) are ids like others; -1 leaves a field alone."""
    nogroup = grp.getgrnam("nogroup").gr_gid
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    os.chown(directory, 0, nogroup)
    ensure_private_dir(directory, uid=uid, gid=gid)
    info = directory.stat()
    assert (info.st_uid, info.st_gid) == (0 if uid == -1 else uid, nogroup if gid == -1 else gid)


def test_a_new_file_is_never_written_over_an_existing_one(tmp_path: Path) -> None:
    (tmp_path / "there").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_new_file(tmp_path / "there", b"new")
    assert (tmp_path / "there").read_bytes() == b"old"
    write_new_file(tmp_path / "grouped", b"v", gid=1)
    assert (tmp_path / "grouped").stat().st_gid == 1


def test_temp_names_are_recognised_as_leftovers(tmp_path: Path) -> None:
    name = temp_name(tmp_path, "current")
    assert name.parent == tmp_path
    assert is_temp_name(name.name)


def test_removing_what_is_already_gone_is_fine(tmp_path: Path) -> None:
    remove_tree(tmp_path / "never-made")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    (tmp_path / "tree" / "link").symlink_to("/etc")
    remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()
    assert Path("/etc").is_dir()


def test_an_owner_without_a_name_is_shown_by_id(tmp_path: Path) -> None:
    directory = tmp_path / "orphan"
    directory.mkdir(mode=0o700)
    os.chown(directory, 4242, 4242)
    with pytest.raises(UnsafePath, match=r"owned by uid 4242, mode 0700"):
        check_dir(str(directory), directory.stat(), ancestor=False)
