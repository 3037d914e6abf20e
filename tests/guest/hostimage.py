"""The *host guest*: a Debian machine (12 or 13, see :data:`~tests.guest.image.RELEASES`) with systemd as PID 1 on which credbridge runs as it
does on a real host (units, ``/run/credstore``, ``LoadCredential=``, reboots).

Unlike the probe guest (:mod:`tests.guest.image`, a RAM root) it has a persistent root file
system: an ext4 image on virtio-blk, mounted by a small switch-root initramfs (dash, kmod,
mount, switch_root and three modules). What a test installs at run time -- units, drop-ins,
enablement, the store under ``/var/lib/credbridge`` -- survives a reboot of the guest, which
QEMU runs with ``snapshot=on`` so the cached image itself never changes.

The image is built from the same pieces as the probe guest (debootstrap, the masked units,
the module copier, the initramfs packer) plus:

* Debian's ``python3`` and a venv ``/opt/credbridge`` holding credbridge, installed with
  ``pip install --no-index`` from a wheel built from the checkout and dependency wheels
  fetched on the host; ``/usr/bin/credbridge`` points at it;
* whatever a :class:`HostGuestRecipe` adds: files, venvs with other wheels, commands run in
  the chroot (users, groups), units to enable;
* the test hook: ``cbhost-driver.service`` runs the executable ``driver`` of a tar archive the
  harness passes through fw_cfg (``opt/credbridge/payload``) on every boot, so tests change
  without rebuilding the image (see :mod:`tests.guest.hostrun`).

Two cache layers: ``hostbase-<hash>/rootfs.tar`` (debootstrap, the slow part) and
``hostguest-<hash>/`` (kernel, initramfs, ``root.img``); a change to credbridge's sources only
rebuilds the second (about 30 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .image import (
    BOOKWORM,
    DEFAULT_MIRROR,
    KERNEL_MODULES,
    MACHINE_ID,
    MASKED_UNITS,
    MIRROR_ENV,
    PACKAGES,
    STRIP_PATHS,
    GuestBuildError,
    HostKernel,
    Release,
    cached_build,
    check_build_tools,
    customize_system,
    default_cache_dir,
    find_host_kernel,
    install_modules,
    pack_initramfs,
    run_build_step,
    strip_tree,
)

#: Bump whenever the build code below changes in a way that affects the image.
HOST_BUILD_VERSION = 1

REPO = Path(__file__).resolve().parents[2]
HOST_PACKAGES: tuple[str, ...] = (*PACKAGES, "python3", "python3-venv")


def missing_for_host_guest(*tools: str) -> str | None:
    """Why this machine cannot build and boot the host guest (a missing tool, of those every
    host guest needs and ``tools``, or not root), or None."""
    for tool in ("qemu-system-x86_64", "debootstrap", "cpio", "zstd", "mke2fs", *tools):
        if shutil.which(tool) is None:
            return f"{tool} not installed (see the README's test command)"
    if os.geteuid() != 0:
        return "building the host guest needs root"
    return None


def host_packages(release: Release) -> tuple[str, ...]:
    """What debootstrap installs into the host guest of ``release``: the TPM2 libraries
    systemd loads for ``systemd-creds --with-key=tpm2`` too (a minimal image lacks them)."""
    return (*HOST_PACKAGES, *release.tpm2_packages)


HOST_MODULES: tuple[str, ...] = (
    *KERNEL_MODULES,
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "virtio_rng",
)
#: What the switch-root initramfs needs to mount the root file system.
INITRD_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
INITRD_PROGRAMS: tuple[str, ...] = (
    "/usr/bin/dash",
    "/usr/bin/kmod",
    "/usr/bin/mount",
    "/usr/bin/sleep",
    "/usr/sbin/switch_root",
)
DISK_BYTES = 2 << 30
CREDBRIDGE_VENV = "/opt/credbridge"
#: The sources a credbridge wheel is built from (their content keys the image).
CREDBRIDGE_SOURCES: tuple[str, ...] = (
    "pyproject.toml",
    "README.md",
    "core",
    "backends",
    "launchers",
)

PAYLOAD_FW_CFG = "opt/credbridge/payload"
DRIVER_UNIT = "cbhost-driver.service"
DRIVER_DIR = "/run/cbhost"
CONSOLE_PREFIX = "CBHOST"
DONE_MARKER = f"{CONSOLE_PREFIX}-DONE"

INIT_SCRIPT = r"""#!/bin/sh
# credbridge host guest: mount the ext4 root (virtio-blk) and hand over to systemd.
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe -a virtio_pci virtio_blk crc32c_generic ext4
n=0
while [ ! -b /dev/vda ] && [ "$n" -lt 300 ]; do
    sleep 0.1
    n=$((n + 1))
done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "CBHOST-INIT cannot mount /dev/vda" >/dev/ttyS0
    echo o >/proc/sysrq-trigger
    sleep 60
fi
exec switch_root /newroot /sbin/init
"""

BOOTSTRAP_PATH = "/usr/local/lib/cbhost/bootstrap"
BOOTSTRAP_SCRIPT = rf"""#!/bin/sh
# Runs the test payload handed over through fw_cfg (see tests/guest/hostrun.py).
set -u
say() {{ printf '{CONSOLE_PREFIX} %s\n' "$*"; }}
modprobe qemu_fw_cfg 2>/dev/null
raw=/sys/firmware/qemu_fw_cfg/by_name/{PAYLOAD_FW_CFG}/raw
n=0
while [ ! -r "$raw" ] && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
rm -rf {DRIVER_DIR}
mkdir -m 0700 {DRIVER_DIR}
if ! tar -x -C {DRIVER_DIR} -f "$raw"; then
    say '{{"event": "crash", "detail": "no payload in fw_cfg"}}'
    say '{DONE_MARKER}'
    systemctl --no-block poweroff
    exit 1
fi
cd {DRIVER_DIR}
./driver
rc=$?
if [ "$rc" -ne 0 ]; then
    say "{{\"event\": \"crash\", \"detail\": \"driver exited with $rc\"}}"
    printf '%s\n' '{DONE_MARKER}'
    systemctl --no-block poweroff
fi
"""

DRIVER_UNIT_TEXT = f"""[Unit]
Description=credbridge host-guest test driver (payload from fw_cfg)
After=multi-user.target

[Service]
Type=simple
ExecStart={BOOTSTRAP_PATH}
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class GuestFile:
    """A file written into the image (``owner`` as ``user:group`` names of the guest)."""

    path: str
    data: bytes
    mode: int = 0o644
    owner: str = "root:root"


@dataclass(frozen=True)
class HostGuestRecipe:
    """What a test adds to the host guest.

    ``commands`` run in the chroot first (as argv lists: ``("groupadd", "--system", "kvm")``),
    then the ``venvs`` are made (``(PATH, (REQUIREMENT, ...))``, wheels fetched on the host),
    then ``files`` are written and ``enable`` is passed to ``systemctl --root=... enable``.
    """

    files: tuple[GuestFile, ...] = ()
    enable: tuple[str, ...] = ()
    venvs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    install_credbridge: bool = True

    def describe(self) -> dict[str, object]:
        return {
            "files": [
                [f.path, hashlib.sha256(f.data).hexdigest(), f.mode, f.owner] for f in self.files
            ],
            "enable": list(self.enable),
            "venvs": [[path, list(reqs)] for path, reqs in self.venvs],
            "commands": [list(c) for c in self.commands],
            "credbridge": _credbridge_source_hash() if self.install_credbridge else None,
        }


@dataclass(frozen=True)
class HostGuestImage:
    """A bootable host guest: kernel, switch-root initramfs and the ext4 root image."""

    release: Release
    kernel: Path
    initramfs: Path
    disk: Path
    kernel_version: str
    directory: Path
    manifest: Mapping[str, object] = field(default_factory=dict)


def _credbridge_source_hash() -> str:
    digest = hashlib.sha256()
    for name in CREDBRIDGE_SOURCES:
        top = REPO / name
        paths = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in paths:
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _hash(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def base_recipe_hash(release: Release = BOOKWORM) -> str:
    return _hash(
        {
            "version": HOST_BUILD_VERSION,
            "suite": release.suite,
            "packages": host_packages(release),
            "layer": "base",
        }
    )


def host_recipe_hash(
    kernel: HostKernel, recipe: HostGuestRecipe, release: Release = BOOKWORM
) -> str:
    return _hash(
        {
            "version": HOST_BUILD_VERSION,
            "base": base_recipe_hash(release),
            "modules": HOST_MODULES,
            "initrd_modules": INITRD_MODULES,
            "initrd_programs": INITRD_PROGRAMS,
            "init": INIT_SCRIPT,
            "bootstrap": BOOTSTRAP_SCRIPT,
            "driver_unit": DRIVER_UNIT_TEXT,
            "masked": MASKED_UNITS,
            "strip": STRIP_PATHS,
            "machine_id": MACHINE_ID,
            "disk_bytes": DISK_BYTES,
            "recipe": recipe.describe(),
            "kernel_version": kernel.version,
            "kernel_size": kernel.vmlinuz.stat().st_size,
        }
    )


def ensure_host_guest(
    recipe: HostGuestRecipe = HostGuestRecipe(),
    cache_dir: Path | None = None,
    release: Release = BOOKWORM,
) -> HostGuestImage:
    """Return the cached host guest of ``release`` for ``recipe``, building it first if needed."""
    base = cache_dir if cache_dir is not None else default_cache_dir()
    kernel = find_host_kernel()
    rootfs = cached_build(
        base,
        f"hostbase-{base_recipe_hash(release)}",
        lambda tmp: _build_base(tmp, release),
        lambda d: (d / "rootfs.tar").is_file(),
    )
    final = cached_build(
        base,
        f"hostguest-{host_recipe_hash(kernel, recipe, release)}",
        lambda tmp: _build_host(tmp, kernel, recipe, rootfs / "rootfs.tar", release),
        lambda d: (d / "manifest.json").is_file(),
    )
    _forget_unused(base, final)
    return HostGuestImage(
        release=release,
        kernel=final / "vmlinuz",
        initramfs=final / "initramfs.cpio.zst",
        disk=final / "root.img",
        kernel_version=kernel.version,
        directory=final,
        manifest=json.loads((final / "manifest.json").read_text()),
    )


def _forget_unused(base: Path, current: Path, max_age: float = 2 * 86400) -> None:
    """Each source change makes a new image (~250 MB): drop those unused for two days."""
    os.utime(current)
    now = time.time()
    for other in base.glob("hostguest-*"):
        try:
            if other.is_dir() and other != current and now - other.stat().st_mtime > max_age:
                shutil.rmtree(other, ignore_errors=True)
                (base / f"{other.name}.lock").unlink(missing_ok=True)
        except OSError:
            continue


# --------------------------------------------------------------------------- build steps


def _build_base(workdir: Path, release: Release) -> None:
    check_build_tools()
    root = workdir / "root"
    mirror = os.environ.get(MIRROR_ENV, DEFAULT_MIRROR)
    run_build_step(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(host_packages(release))}",
            release.suite,
            str(root),
            mirror,
        ]
    )
    run_build_step(
        ["tar", "-C", str(root), "--numeric-owner", "-cf", str(workdir / "rootfs.tar"), "."]
    )
    shutil.rmtree(root)
    workdir.chmod(0o755)


def _chroot(root: Path, *argv: str) -> None:
    """Run a command inside the image with a clean environment (no host pip settings)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    result = subprocess.run(
        ["chroot", str(root), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        tail = result.stdout.decode(errors="replace")[-4000:]
        raise GuestBuildError(
            f"in the image, {' '.join(argv)} failed ({result.returncode}):\n{tail}"
        )


def _host_wheels(directory: Path, requirements: Sequence[str], release: Release) -> None:
    """Wheels for ``requirements`` and all their dependencies, fetched/built on the host.

    When the guest's Python is not the host's (trixie's 3.13 under a 3.11 host), local
    projects are built as (pure) wheels without their dependencies, and every dependency is
    downloaded as a binary wheel for the guest's Python and platform: a wheel compiled for
    the host's Python would not import in the guest.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    if release.python == f"{sys.version_info.major}.{sys.version_info.minor}":
        run_build_step([*pip, "wheel", "--quiet", "--wheel-dir", str(directory), *requirements])
        return
    local = [r for r in requirements if Path(r).is_dir()]
    if local:
        run_build_step(
            [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(directory), *local]
        )
    built = [str(w) for w in sorted(directory.glob("*.whl"))]
    remote = [r for r in requirements if not Path(r).is_dir()]
    run_build_step(
        [
            *pip,
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            release.python,
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "--dest",
            str(directory),
            *built,
            *remote,
        ]
    )


def _make_venv(root: Path, venv: str, wheels: Path, requirements: Sequence[str]) -> None:
    inside = Path("/tmp") / f"wheels-{hashlib.sha256(venv.encode()).hexdigest()[:8]}"
    shutil.copytree(wheels, root / inside.relative_to("/"))
    _chroot(root, "/usr/bin/python3", "-m", "venv", venv)
    _chroot(
        root,
        f"{venv}/bin/pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--find-links",
        str(inside),
        *requirements,
    )
    shutil.rmtree(root / inside.relative_to("/"))


def _guest_id(root: Path, table: str, name: str) -> int:
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if fields and fields[0] == name:
            return int(fields[2])
    raise GuestBuildError(f"no {name!r} in the image's /etc/{table}")


def _write_file(root: Path, item: GuestFile) -> None:
    path = root / item.path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(item.data)
    user, _, group = item.owner.partition(":")
    os.chown(path, _guest_id(root, "passwd", user), _guest_id(root, "group", group or user))
    path.chmod(item.mode)


def _build_host(
    workdir: Path, kernel: HostKernel, recipe: HostGuestRecipe, rootfs: Path, release: Release
) -> None:
    check_build_tools()
    missing = [t for t in ("mke2fs", "chroot", "systemctl", "tar") if shutil.which(t) is None]
    if missing:
        raise GuestBuildError(
            f"missing tools for the host guest: {', '.join(missing)} (apt-get install e2fsprogs systemd)"
        )
    started = time.monotonic()
    root = workdir / "root"
    root.mkdir()
    run_build_step(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(rootfs)])
    customize_system(root, "cbhost")
    (root / "etc" / "fstab").write_text("# / is /dev/vda, mounted read-write by the initramfs\n")
    install_modules(root, kernel, HOST_MODULES)
    for command in recipe.commands:
        _chroot(root, *command)
    wheels = workdir / "wheels"
    if recipe.install_credbridge:
        _host_wheels(wheels / "credbridge", [str(REPO)], release)
        _make_venv(root, CREDBRIDGE_VENV, wheels / "credbridge", ["credbridge"])
        link = root / "usr" / "bin" / "credbridge"
        link.symlink_to(f"{CREDBRIDGE_VENV}/bin/credbridge")
    for index, (venv, requirements) in enumerate(recipe.venvs):
        _host_wheels(wheels / str(index), requirements, release)
        _make_venv(root, venv, wheels / str(index), requirements)
    files = (
        GuestFile(BOOTSTRAP_PATH, BOOTSTRAP_SCRIPT.encode(), 0o755),
        GuestFile(f"/etc/systemd/system/{DRIVER_UNIT}", DRIVER_UNIT_TEXT.encode()),
        *recipe.files,
    )
    for item in files:
        _write_file(root, item)
    run_build_step(["systemctl", f"--root={root}", "enable", DRIVER_UNIT, *recipe.enable])
    strip_tree(root)
    _check_no_initrd_release(root)
    _make_disk(root, workdir / "root.img")
    _make_initramfs(root, kernel, workdir)
    shutil.copyfile(kernel.vmlinuz, workdir / "vmlinuz")
    shutil.rmtree(root)
    shutil.rmtree(wheels, ignore_errors=True)
    manifest = {
        "kernel_version": kernel.version,
        "suite": release.suite,
        "packages": list(host_packages(release)),
        "modules": list(HOST_MODULES),
        "disk_bytes_used": _allocated(workdir / "root.img"),
        "initramfs_bytes": (workdir / "initramfs.cpio.zst").stat().st_size,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (workdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    workdir.chmod(0o755)


def _check_no_initrd_release(root: Path) -> None:
    for rel in ("etc/initrd-release", "usr/lib/initrd-release"):
        if (root / rel).exists():
            (root / rel).unlink()


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _make_disk(root: Path, image: Path) -> None:
    with open(image, "wb") as handle:
        handle.truncate(DISK_BYTES)
    run_build_step(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "cbhost-root", "-d", str(root), str(image)]
    )


# --------------------------------------------------------------------------- initramfs


def _libraries(root: Path, programs: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for program in programs:
        out = subprocess.run(
            ["chroot", str(root), "/usr/bin/ldd", program],
            capture_output=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
            check=False,
        )
        if out.returncode != 0:
            raise GuestBuildError(f"ldd {program} in the image failed: {out.stderr.decode()}")
        for line in out.stdout.decode().splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match:
                found.add(match.group(1))
    return found


def _make_initramfs(root: Path, kernel: HostKernel, workdir: Path) -> None:
    initrd = workdir / "initrd"
    for directory in (
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "proc",
        "sys",
        "dev",
        "run",
        "newroot",
    ):
        (initrd / directory).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (initrd / name).symlink_to(f"usr/{name}")
    for path in sorted({*INITRD_PROGRAMS, *_libraries(root, INITRD_PROGRAMS)}):
        target = initrd / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_resolve_in(root, path), target)
    (initrd / "usr/bin/sh").symlink_to("dash")
    for tool in ("modprobe", "insmod"):
        (initrd / "usr/sbin" / tool).symlink_to("../bin/kmod")
    init = initrd / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    install_modules(initrd, kernel, INITRD_MODULES)
    pack_initramfs(initrd, workdir / "initramfs.cpio.zst")
    shutil.rmtree(initrd)


def _resolve_in(root: Path, path: str) -> Path:
    """Follow symlinks of ``path`` as the image sees them (absolute targets stay inside)."""
    current = path
    for _ in range(40):
        parts = Path(current).parts[1:]
        resolved = Path("/")
        restart = False
        for index, part in enumerate(parts):
            candidate = resolved / part
            host = root / candidate.relative_to("/")
            if host.is_symlink():
                target = os.readlink(host)
                joined = Path(target) if target.startswith("/") else resolved / target
                rest = Path(*parts[index + 1 :]) if index + 1 < len(parts) else None
                current = os.path.normpath(joined / rest if rest else joined)
                restart = True
                break
            resolved = candidate
        if not restart:
            return root / resolved.relative_to("/")
    raise GuestBuildError(f"symlink loop resolving {path} in the image")
