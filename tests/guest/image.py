"""Build (once) and cache a small Debian guest: host kernel + cpio initramfs.

Two releases, so every guest test runs on two systemd versions (:data:`RELEASES`): Debian 12
"bookworm" (systemd 252) and Debian 13 "trixie" (systemd 257), both from Debian's packages.
Both boot the host's kernel: the claim under test is systemd's, and one kernel keeps the
module copier and the boot line the same for both (257 falls back from tmpfs+noswap to ramfs
for ``$CREDENTIALS_DIRECTORY`` on a kernel older than 6.4, as 252 always does).

The root file system is made with ``debootstrap --variant=minbase`` (systemd as
PID 1), trimmed, given the in-guest probe (see :mod:`tests.guest.probe`) and the
few kernel modules the credential channels need, and packed into a zstd
compressed cpio archive.  The kernel boots it with ``rdinit=/sbin/init``, so
systemd runs as a normal system straight from RAM (``/etc/initrd-release`` is
absent, so systemd does not consider itself an initrd).

The result is cached under ``$CREDBRIDGE_TEST_CACHE`` (default
``~/.cache/credbridge-tests``) in ``guest-<hash>/``; the hash covers the whole
recipe, so changing it rebuilds.  Builds happen in a temporary directory that
is renamed into place, under an exclusive lock file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import probe

#: Bump whenever the build code below changes in a way that affects the image.
BUILD_CODE_VERSION = 1

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES: tuple[str, ...] = ("systemd", "systemd-sysv", "udev", "kmod")


@dataclass(frozen=True)
class Release:
    """A Debian release the test guests are built from, and the systemd it ships."""

    suite: str
    systemd: int
    #: Debian's Python in this release (the host guest's venv needs wheels for it).
    python: str
    #: Packages that provide the TPM2 libraries systemd dlopen()s (only Suggested by systemd,
    #: so a minimal image lacks them; see ../shared/research/systemd-versions.md section 7).
    tpm2_packages: tuple[str, ...]

    @property
    def test_id(self) -> str:
        """The id in test names: ``systemd252``, ``systemd257``."""
        return f"systemd{self.systemd}"


BOOKWORM = Release(
    suite="bookworm",
    systemd=252,
    python="3.11",
    tpm2_packages=("libtss2-esys-3.0.2-0", "libtss2-mu0", "libtss2-rc0"),
)
TRIXIE = Release(
    suite="trixie",
    systemd=257,
    python="3.13",
    tpm2_packages=("libtss2-esys-3.0.2-0t64", "libtss2-mu-4.0.1-0t64", "libtss2-rc0t64"),
)
#: Every guest test runs once per release (fixtures parametrised with ``test_id`` as the id).
RELEASES: tuple[Release, ...] = (BOOKWORM, TRIXIE)


def missing_for_probe_guest(*tools: str) -> str | None:
    """Why this machine cannot build and boot the probe guest (a missing tool, of those every
    probe guest needs and ``tools``, or not root), or None."""
    for tool in ("qemu-system-x86_64", "debootstrap", "cpio", "zstd", *tools):
        if shutil.which(tool) is None:
            return f"{tool} not installed (see the README's test command)"
    if os.geteuid() != 0:
        return "building the guest image needs root"
    return None


def release_id(release: Release) -> str:
    """The test id of a release (``ids=release_id`` in a fixture over :data:`RELEASES`)."""
    return release.test_id


#: Kernel modules (plus their dependencies) copied into the guest.
KERNEL_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_console",
    "fuse",
    "virtiofs",
    "dmi-sysfs",
    "qemu_fw_cfg",
    "autofs4",
)

#: Units masked to keep boot short under TCG (a mask of an absent unit is harmless).
MASKED_UNITS: tuple[str, ...] = (
    "getty.target",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "console-getty.service",
    "timers.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "systemd-logind.service",
    "systemd-user-sessions.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-random-seed.service",
    "systemd-pstore.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-journal-flush.service",
    "systemd-journal-catalog-update.service",
    "systemd-hwdb-update.service",
    "systemd-update-done.service",
    "systemd-sysusers.service",
    "systemd-binfmt.service",
    "systemd-udev-settle.service",
    "systemd-networkd.service",
    "systemd-network-generator.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-boot-check-no-failures.service",
    "ldconfig.service",
    "proc-sys-fs-binfmt_misc.automount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@loop.service",
    "modprobe@dm_mod.service",
    "modprobe@configfs.service",
    "systemd-ask-password-wall.path",
    "systemd-ask-password-console.path",
    "remote-fs.target",
    "rc-local.service",
)

#: Paths or glob patterns (relative to the root) removed to keep the initramfs small.
STRIP_PATHS: tuple[str, ...] = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/bash-completion",
    "usr/share/zoneinfo",
    "usr/share/common-licenses",
    "usr/share/zsh",
    "usr/share/fish",
    "usr/lib/udev/hwdb.d",
    "usr/lib/udev/hwdb.bin",
    "etc/udev/hwdb.bin",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/share/perl5",
    "usr/bin/perl*",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/info",
    "var/log",
    "etc/initrd-release",
    "usr/lib/initrd-release",
)

#: Fixed machine id: avoids "first boot" logic (presets, firstboot) in the guest.
MACHINE_ID = "c7ed0b1d9e0c4c1a8f7a1b2c3d4e5f60\n"

ZSTD_LEVEL = 9

#: The guest-side files credbridge ships (examples/guest/ in the repository).
EXAMPLES_GUEST_DIR = Path(__file__).resolve().parents[2] / "examples" / "guest"
#: Shipped units installed into /etc/systemd/system/ (not enabled: the probe starts them).
SHIPPED_UNITS: tuple[str, ...] = (probe.MOUNT_UNIT_NAME, "credbridge-import.service")
#: The shipped drop-in, installed where the probe reads it (see ``credbridge.units=1``).
SHIPPED_DROPIN = "credbridge-credentials.conf"

CACHE_ENV = "CREDBRIDGE_TEST_CACHE"
MIRROR_ENV = "CREDBRIDGE_TEST_MIRROR"
KERNEL_ENV = "CREDBRIDGE_TEST_KERNEL_VERSION"


class GuestBuildError(RuntimeError):
    """The guest image cannot be built on this machine."""


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: kernel plus initramfs (the root file system)."""

    kernel: Path
    initramfs: Path
    kernel_version: str
    directory: Path
    release: Release = BOOKWORM


@dataclass(frozen=True)
class HostKernel:
    version: str
    vmlinuz: Path
    modules_dir: Path


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts = re.split(r"[.\-+~]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def find_host_kernel(
    boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")
) -> HostKernel:
    """Newest installed 6.x Debian kernel (``/boot/vmlinuz-*`` with its modules).

    ``$CREDBRIDGE_TEST_KERNEL_VERSION`` selects a specific version instead.
    """
    wanted = os.environ.get(KERNEL_ENV)
    candidates: list[HostKernel] = []
    for vmlinuz in boot_dir.glob("vmlinuz-*"):
        version = vmlinuz.name[len("vmlinuz-") :]
        if wanted is not None and version != wanted:
            continue
        if wanted is None and not version.startswith("6."):
            continue
        modules_dir = modules_root / version
        if not (modules_dir / "modules.dep").is_file():
            continue
        candidates.append(HostKernel(version, vmlinuz, modules_dir))
    if not candidates:
        what = f"version {wanted!r} (${KERNEL_ENV})" if wanted else "6.x"
        raise GuestBuildError(
            f"no installed Linux {what} kernel found: need {boot_dir}/vmlinuz-<ver> and "
            f"{modules_root}/<ver>/modules.dep; install it with 'apt-get install linux-image-amd64'"
        )
    return max(candidates, key=lambda k: _version_key(k.version))


#: ``XEN_ELFNOTE_PHYS32_ENTRY``: the ELF note of a kernel QEMU can start directly (PVH).
_PVH_ENTRY_NOTE = 18


def boot_kernel(kernel: HostKernel, cache_dir: Path | None = None) -> Path:
    """What QEMU boots as ``-kernel``: the host kernel uncompressed (``vmlinux``, ELF) when it
    has a PVH entry point, else its ``vmlinuz``.

    A bzImage unpacks itself before Linux starts, and under TCG that is slow: Debian's
    xz-compressed kernel spent 44 s of a 79 s probe-guest boot there on the loaded 2-core
    machine, the ELF kernel none (docs/testing.md). QEMU loads an ELF kernel with a PVH note
    straight into guest memory. Cached once per kernel in ``vmlinux-<version>-<hash>/``.
    """
    base = cache_dir if cache_dir is not None else default_cache_dir()
    blob = kernel.vmlinuz.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()[:16]

    def extract(tmp: Path) -> None:
        elf = uncompressed_kernel(blob)
        (tmp / "vmlinux").write_bytes(elf if elf is not None and has_pvh_entry(elf) else b"")

    final = cached_build(
        base,
        f"vmlinux-{kernel.version}-{digest}",
        extract,
        lambda directory: (directory / "vmlinux").is_file(),
    )
    vmlinux = final / "vmlinux"
    # Empty: this kernel cannot be booted through PVH (remembered, not tried again).
    return vmlinux if vmlinux.stat().st_size > 0 else kernel.vmlinuz


def uncompressed_kernel(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (boot protocol 2.08+: ``payload_offset`` and
    ``payload_length``), or None when its compression is not one read here (xz, gzip, zstd)."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    if struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(wbits=31).decompress(payload)
        if payload.startswith(b"\x28\xb5\x2f\xfd"):
            # The kernel build appends the uncompressed size (4 bytes) after the frame.
            result = subprocess.run(
                ["zstd", "-dcq"], input=payload[:-4], capture_output=True, check=False
            )
            return result.stdout if result.returncode == 0 else None
    except (lzma.LZMAError, zlib.error):
        return None
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF kernel carries the PVH entry note."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + index * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        position, end = p_offset, p_offset + p_filesz
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, position)
            name = elf[position + 12 : position + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _PVH_ENTRY_NOTE:
                return True
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def recipe_hash(kernel: HostKernel, release: Release = BOOKWORM) -> str:
    """Hash of everything that determines the image content."""
    recipe = {
        "build_code_version": BUILD_CODE_VERSION,
        "suite": release.suite,
        "packages": PACKAGES,
        "modules": KERNEL_MODULES,
        "masked": MASKED_UNITS,
        "strip": STRIP_PATHS,
        "machine_id": MACHINE_ID,
        "zstd_level": ZSTD_LEVEL,
        "probe_script": probe.PROBE_SCRIPT,
        "values_script": probe.VALUES_SCRIPT,
        "probe_unit": probe.PROBE_UNIT,
        "shipped": _shipped_files(),
        "kernel_version": kernel.version,
        "kernel_size": kernel.vmlinuz.stat().st_size,
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _shipped_files() -> dict[str, str]:
    """Contents of the shipped guest files (examples/guest/) the image carries."""
    files: dict[str, str] = {}
    for name in (*SHIPPED_UNITS, SHIPPED_DROPIN):
        path = EXAMPLES_GUEST_DIR / name
        try:
            files[name] = path.read_text()
        except OSError as error:
            raise GuestBuildError(f"cannot read the shipped guest file {path}: {error}") from error
    return files


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "credbridge-tests"


def ensure_guest(cache_dir: Path | None = None, release: Release = BOOKWORM) -> GuestImage:
    """Return the cached guest image of ``release``, building it first if needed.

    ``cache_dir`` defaults to ``$CREDBRIDGE_TEST_CACHE`` or
    ``~/.cache/credbridge-tests``; the image lives in ``guest-<hash>/`` below it.
    Raises :class:`GuestBuildError` with a readable message when it cannot build.
    """
    base = cache_dir if cache_dir is not None else default_cache_dir()
    kernel = find_host_kernel()
    digest = recipe_hash(kernel, release)
    final = cached_build(
        base,
        f"guest-{digest}",
        lambda tmp: _build(tmp, kernel, release),
        lambda directory: _image_in(directory, kernel.version) is not None,
    )
    image = _image_in(final, kernel.version, release)
    if image is None:  # pragma: no cover - would be a bug in _build
        raise GuestBuildError(f"build finished but {final} is incomplete")
    return dataclasses.replace(image, kernel=boot_kernel(kernel, base))


def cached_build(
    base: Path,
    name: str,
    build: Callable[[Path], None],
    complete: Callable[[Path], bool],
) -> Path:
    """``base/name``, built once by ``build(tmpdir)`` under a lock and renamed into place.

    Shared by every cached test artefact (the probe guest, the host guest and its layers):
    concurrent test runs wait for one build; a killed build leaves only a temporary
    directory, removed by a later run.
    """
    final = base / name
    if complete(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(base)
    with open(base / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if complete(final):
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not complete(final):  # pragma: no cover - would be a bug in build
        raise GuestBuildError(f"build finished but {final} is incomplete")
    return final


def _remove_stale_builds(base: Path, max_age: float = 6 * 3600) -> None:
    """Remove temporary build dirs left behind by killed builds (never a live one)."""
    now = time.time()
    for tmp in base.glob(".*-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > max_age:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def _image_in(
    directory: Path, kernel_version: str, release: Release = BOOKWORM
) -> GuestImage | None:
    kernel = directory / "vmlinuz"
    initramfs = directory / "initramfs.cpio.zst"
    if (directory / "manifest.json").is_file() and kernel.is_file() and initramfs.is_file():
        return GuestImage(
            kernel=kernel,
            initramfs=initramfs,
            kernel_version=kernel_version,
            directory=directory,
            release=release,
        )
    return None


def check_build_tools() -> None:
    if os.geteuid() != 0:
        raise GuestBuildError("building the guest image needs root (debootstrap, device nodes)")
    missing = [t for t in ("debootstrap", "cpio", "zstd", "depmod") if shutil.which(t) is None]
    if missing:
        raise GuestBuildError(
            f"missing tools for the guest build: {', '.join(missing)} "
            "(apt-get install debootstrap cpio zstd kmod)"
        )


def run_build_step(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = result.stdout.decode(errors="replace")[-4000:]
        raise GuestBuildError(f"command failed ({result.returncode}): {' '.join(argv)}\n{tail}")


def _build(workdir: Path, kernel: HostKernel, release: Release) -> None:
    check_build_tools()
    started = time.monotonic()
    root = workdir / "root"
    mirror = os.environ.get(MIRROR_ENV, DEFAULT_MIRROR)
    run_build_step(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            release.suite,
            str(root),
            mirror,
        ]
    )
    debootstrap_s = time.monotonic() - started
    _customize(root)
    install_modules(root, kernel)
    strip_tree(root)
    shutil.copyfile(kernel.vmlinuz, workdir / "vmlinuz")
    pack_initramfs(root, workdir / "initramfs.cpio.zst")
    root_size = _tree_size(root)
    shutil.rmtree(root)
    manifest = {
        "kernel_version": kernel.version,
        "suite": release.suite,
        "packages": list(PACKAGES),
        "modules": list(KERNEL_MODULES),
        "root_bytes": root_size,
        "initramfs_bytes": (workdir / "initramfs.cpio.zst").stat().st_size,
        "debootstrap_seconds": round(debootstrap_s, 1),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (workdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    workdir.chmod(0o755)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _symlink(target: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _customize(root: Path) -> None:
    etc = root / "etc"
    unit_dir = etc / "systemd" / "system"
    _write(root / probe.PROBE_SCRIPT_PATH.lstrip("/"), probe.PROBE_SCRIPT, 0o755)
    _write(root / probe.VALUES_SCRIPT_PATH.lstrip("/"), probe.VALUES_SCRIPT, 0o755)
    _write(unit_dir / probe.PROBE_UNIT_NAME, probe.PROBE_UNIT)
    shipped = _shipped_files()
    for name in SHIPPED_UNITS:
        _write(unit_dir / name, shipped[name])
    _write(root / probe.CREDENTIALS_DROPIN_PATH.lstrip("/"), shipped[SHIPPED_DROPIN])
    customize_system(root, "cbguest")
    _symlink(
        f"../{probe.PROBE_UNIT_NAME}", unit_dir / "multi-user.target.wants" / probe.PROBE_UNIT_NAME
    )


def customize_system(root: Path, hostname: str) -> None:
    """What every test guest gets: no gettys or timers, a fixed machine id, a volatile
    journal, an empty root password (no network), ``multi-user.target`` as default."""
    etc = root / "etc"
    unit_dir = etc / "systemd" / "system"
    # Drop the distribution's enablement of gettys and timers, then mask the rest.
    for wants in ("getty.target.wants", "timers.target.wants"):
        shutil.rmtree(unit_dir / wants, ignore_errors=True)
    for unit in MASKED_UNITS:
        _symlink("/dev/null", unit_dir / unit)
    _symlink("/usr/lib/systemd/system/multi-user.target", unit_dir / "default.target")
    _write(etc / "machine-id", MACHINE_ID, 0o444)
    _write(etc / "hostname", f"{hostname}\n")
    _write(etc / "fstab", "# empty: the root file system is the initramfs\n")
    # Journal only in memory; nothing forwarded to the console.
    _write(
        etc / "systemd" / "journald.conf.d" / "credbridge.conf",
        "[Journal]\nStorage=volatile\nForwardToConsole=no\n",
    )
    # Empty root password for interactive debugging (the guest has no network).
    shadow = etc / "shadow"
    if shadow.is_file():
        text = shadow.read_text()
        shadow.write_text(re.sub(r"^root:[^:]*:", "root::", text, flags=re.M))


def _module_name(rel_path: str) -> str:
    name = rel_path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def install_modules(
    root: Path, kernel: HostKernel, modules: Sequence[str] = KERNEL_MODULES
) -> None:
    """Copy ``modules`` and their dependencies from the host kernel, then depmod."""
    src = kernel.modules_dir
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (src / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[_module_name(mod)] = mod
    builtin: set[str] = set()
    if (src / "modules.builtin").is_file():
        builtin = {_module_name(x) for x in (src / "modules.builtin").read_text().split()}

    selected: set[str] = set()
    for wanted in modules:
        key = wanted.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise GuestBuildError(
                f"kernel {kernel.version} lacks module {wanted!r} (not built in nor in modules.dep)"
            )
        todo = [by_name[key]]
        while todo:
            mod = todo.pop()
            if mod not in selected:
                selected.add(mod)
                todo.extend(deps.get(mod, []))

    dst = root / "lib" / "modules" / kernel.version
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for mod in sorted(selected):
        target = dst / mod
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / mod, target)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / meta).is_file():
            shutil.copy2(src / meta, dst / meta)
    run_build_step(["depmod", "-b", str(root), kernel.version])


def strip_tree(root: Path) -> None:
    for pattern in STRIP_PATHS:
        for path in sorted(root.glob(pattern)):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
    (root / "var" / "log").mkdir(parents=True, exist_ok=True)
    (root / "var" / "lib" / "dpkg" / "info").mkdir(parents=True, exist_ok=True)
    for cache in (root / "var" / "cache" / "debconf").glob("*-old"):
        cache.unlink()


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def pack_initramfs(root: Path, output: Path) -> None:
    if (root / "etc" / "initrd-release").exists():
        raise GuestBuildError(
            "/etc/initrd-release exists in the guest; systemd would run as an initrd"
        )
    names = sorted(
        str(Path(dirpath, name).relative_to(root))
        for dirpath, dirs, files in os.walk(root)
        for name in [*dirs, *files]
    )
    listing = ("\0".join([".", *names]) + "\0").encode()
    with open(output, "wb") as out:
        cpio = subprocess.Popen(
            ["cpio", "--null", "--create", "--format=newc", "--quiet", "--reproducible"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        zstd = subprocess.Popen(
            ["zstd", "-q", f"-{ZSTD_LEVEL}", "-T0", "--stdout"],
            stdin=cpio.stdout,
            stdout=out,
        )
        assert cpio.stdin is not None
        assert cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write(listing)
        cpio.stdin.close()
        rc_cpio = cpio.wait()
        rc_zstd = zstd.wait()
    if rc_cpio != 0 or rc_zstd != 0:
        raise GuestBuildError(f"packing the initramfs failed (cpio {rc_cpio}, zstd {rc_zstd})")
