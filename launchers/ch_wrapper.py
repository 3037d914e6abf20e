"""``credbridge-cloud-hypervisor`` — a ``cloud-hypervisor`` that adds a VM's credentials.

microvm.nix's cloud-hypervisor runner (``lib/runners/cloud-hypervisor.nix``) describes the
whole VM on the command line and refuses ``credentialFiles``. This program takes that command
line in place of the real binary (the NixOS module points ``microvm.cloud-hypervisor.package``
at a package whose ``bin/cloud-hypervisor`` runs it) and::

    parse the argv exactly as cloud-hypervisor would      (refuse what it cannot carry over)
    resolve the VM target's credentials (CREDBRIDGE_VM)   (credential: reads the unit's
                                                           $CREDENTIALS_DIRECTORY)
    REAL --api-socket path=SOCK                           (no VM flags, no secrets)
    PUT /api/v1/vm.create   the same VM as a VmConfig, the credentials added as OEM strings
                            after the ones microvm.nix set (vmm.notify_socket)
    PUT /api/v1/vm.boot     ... and wait; cloud-hypervisor's exit status is ours

It is the ``cloud-hypervisor`` launcher (:mod:`credbridge.launchers.cloud_hypervisor`) with the
launcher table read from an argv instead of the config: the same ``VmConfig`` builder, API
client, runtime directory, signal forwarding and ``-v`` refusal. A flag or option key it cannot
translate faithfully into the API is refused with one line naming it; nothing is dropped.

Environment: ``CREDBRIDGE_VM`` (the VM target), ``CREDBRIDGE_CONFIG`` (the config file),
``CREDBRIDGE_CLOUD_HYPERVISOR`` (the real binary; default ``cloud-hypervisor`` on ``PATH``).
``--credbridge-plan`` before the cloud-hypervisor flags prints the plan (values redacted) and
starts nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from platform import machine
from typing import Any

from credbridge.core.config import load_config
from credbridge.core.engine import Session
from credbridge.core.errors import ConfigError, CredbridgeError, LaunchError
from credbridge.core.secret import Secret
from credbridge.core.types import LauncherContext, Mode, Pending
from credbridge.core.vm import VmChannel
from credbridge.launchers.ch_api import API_PREFIX, ApiClient
from credbridge.launchers.ch_cli import Invocation, UntranslatableArgument, parse_argv
from credbridge.launchers.ch_options import OPTION_KEYS, PASS_THROUGH
from credbridge.launchers.ch_rules import create_rule_broken
from credbridge.launchers.cloud_hypervisor import CloudHypervisorLauncher, LaunchSpec
from credbridge.launchers.hooks import RUNTIME_KEYS

log = logging.getLogger(__name__)

PROG = "credbridge-cloud-hypervisor"
VM_ENV = "CREDBRIDGE_VM"
BINARY_ENV = "CREDBRIDGE_CLOUD_HYPERVISOR"
PLAN_FLAG = "--credbridge-plan"
_MAX_OEM_STRINGS = 255
#: Launcher-table keys the wrapper takes from the config: how to run, not what to run.
CONFIG_LAUNCHER_KEYS = RUNTIME_KEYS | {"timeout", "runtime_dir"}


# --------------------------------------------------------------------------- the launcher


class WrapperLauncher(CloudHypervisorLauncher):
    """The cloud-hypervisor launcher, fed from a translated argv instead of a launcher table."""

    def __init__(self, context: LauncherContext, invocation: Invocation) -> None:
        super().__init__(context)
        self.invocation = invocation
        self.late_nets: list[tuple[dict[str, Any], list[int]]] = []
        """Interfaces sent with ``vm.add-net`` after ``vm.create``: every ``--net``, in order,
        when one has file descriptors (cloud-hypervisor drops fds sent with vm.create)."""

    def _socket(self, default: Path) -> Path:
        return Path(self.invocation.api_socket) if self.invocation.api_socket else default

    def build(
        self, channel: VmChannel, runtime: Path, fs_sockets: Sequence[Path], *, redact: bool
    ) -> LaunchSpec:
        spec = super().build(channel, runtime, fs_sockets, redact=redact)
        if spec.body is None:  # oem_strings_on_cmdline is not a setting the wrapper passes
            raise LaunchError("the wrapper only starts cloud-hypervisor through its API")
        body = spec.body
        inv = self.invocation
        credential_fs = body.pop("fs", [])
        body.update({k: v for k, v in inv.overlay.items() if k not in {"memory", "fs"}})
        body["payload"].update(inv.payload)
        body["console"].update(inv.console_pci)
        memory = _shared_for_virtiofs(inv.memory, self.target.name) if credential_fs else inv.memory
        body["memory"] = memory
        fs = [*inv.overlay.get("fs", []), *credential_fs]
        if fs:
            body["fs"] = fs
        platform = body.setdefault("platform", {})
        strings = [*inv.oem_strings, *platform.get("oem_strings", [])]
        if len(strings) > _MAX_OEM_STRINGS:
            raise LaunchError(
                f"{self.target.name}: {len(strings)} OEM strings; SMBIOS holds at most "
                f"{_MAX_OEM_STRINGS}"
            )
        if strings:
            platform["oem_strings"] = strings
        if not platform:
            del body["platform"]
        nets = body.get("net", [])
        fds = inv.net_fds
        checked = {
            **body,
            "net": [{**n, "fds": f} if f else n for n, f in zip(nets, fds, strict=True)],
        }
        if problem := create_rule_broken(checked, machine()):
            raise ConfigError(
                f"cloud-hypervisor would refuse this VM: {problem}", key=self.target.name
            )
        self.late_nets = []
        if any(fds):
            self.late_nets = [(net, f or []) for net, f in zip(body.pop("net"), fds, strict=True)]
        socket_path = self._socket(spec.socket)
        return LaunchSpec(self._argv(socket_path), body, socket_path)

    def plan(self, credentials: Mapping[str, Secret | Pending]) -> Mapping[str, Any]:
        plan = dict(super().plan(credentials))
        add_net = [
            {"method": "PUT", "endpoint": API_PREFIX + "vm.add-net", "body": net, "fds": fds}
            for net, fds in self.late_nets
        ]
        plan["requests"] = [*plan["requests"][:2], *add_net, *plan["requests"][2:]]
        return plan

    def _after_create(self, api: ApiClient) -> None:
        for net, fds in self.late_nets:
            # The file descriptors travel as SCM_RIGHTS with the request (http_endpoint.rs).
            api.put("vm.add-net", json.dumps(net).encode(), fds=fds)

    def _argv(self, socket_path: Path) -> list[str]:
        return [self.binary, "--api-socket", f"path={socket_path}", *self.invocation.process_args]

    def launch(self, deliveries: Sequence[Any]) -> int:
        if deliveries and self.invocation.confidential() and self.target.sink == "oem-strings":
            raise ConfigError(
                "tdx/sev_snp is on: systemd in a confidential VM ignores SMBIOS credentials",
                file=self.label,
                key=f"{self.target.where}.sink",
            )
        if deliveries and self.target.sink == "oem-strings" and machine() != "x86_64":
            raise ConfigError(
                f"cloud-hypervisor writes SMBIOS OEM strings on x86_64 only, not on "
                f'{machine()}: use sink = "virtiofs"',
                file=self.label,
                key=f"{self.target.where}.sink",
            )
        if self.invocation.api_socket:
            _clear_stale_socket(Path(self.invocation.api_socket))
        return super().launch(deliveries)


def _shared_for_virtiofs(memory: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``memory`` changed so that virtiofsd can map the guest's RAM (the credentials' share is
    vhost-user): shared, and so not mergeable, which cloud-hypervisor refuses together. With
    ``size=0`` the RAM is the zones', so each zone is. Hugepages are shared already."""
    out = {**memory, "zones": [dict(zone) for zone in memory.get("zones", [])]}
    if not out["zones"]:
        del out["zones"]
    parts = out["zones"] if memory.get("size") == 0 and out.get("zones") else [out]
    merged = False
    for part in parts:
        if not part.get("hugepages") and not part.get("shared"):
            part["shared"] = True
            merged |= bool(part.pop("mergeable", False))
    if merged:
        log.info(
            "VM %s: memory shared with virtiofsd for the credentials' share, so mergeable=on "
            "(KSM) is turned off",
            name,
        )
    return out


def _clear_stale_socket(path: Path) -> None:
    """What microvm.nix's preStart does (``rm -f SOCKET``), but only ever to a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise LaunchError(f"--api-socket {path} exists and is not a socket; refusing to replace it")
    path.unlink()


def check_inherited_fds(invocation: Invocation) -> None:
    """Every ``--net fd=`` names a descriptor this process inherited. Checked first thing:
    a number the wrapper itself opened later would be some other file."""
    for fd in (fd for fds in invocation.net_fds for fd in fds or ()):
        try:
            os.fstat(fd)
        except OSError:
            raise UntranslatableArgument(
                "--net",
                f"fd {fd} is not open (microvm-run opens a macvtap interface's queues "
                "before it execs cloud-hypervisor)",
            ) from None


def real_binary(environ: Mapping[str, str]) -> str:
    """The real cloud-hypervisor: ``$CREDBRIDGE_CLOUD_HYPERVISOR``, else one on PATH that is
    not this wrapper (a wrapper installed as ``cloud-hypervisor`` must not start itself)."""
    configured = environ.get(BINARY_ENV)
    if configured:
        return configured
    me = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    for directory in environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = shutil.which("cloud-hypervisor", path=directory or ".")
        if candidate and Path(candidate).resolve() != me:
            return candidate
    raise LaunchError(
        f"no real cloud-hypervisor found: set {BINARY_ENV} to its path "
        "(the NixOS module's wrapper package does)"
    )


def open_launcher(
    session: Session, name: str, invocation: Invocation, binary: str
) -> WrapperLauncher:
    """The launcher for VM target ``name`` of the session's config, fed from ``invocation``."""
    session.validate()
    target = session.select_targets([name], kind="vm")[0]
    for key in target.launcher_settings:
        if key not in CONFIG_LAUNCHER_KEYS:
            raise ConfigError(
                "the VM's shape comes from cloud-hypervisor's command line here; the launcher "
                f"table may set only {', '.join(sorted(CONFIG_LAUNCHER_KEYS))}",
                file=session.config.label,
                key=f"{target.where}.launcher.{key}",
            )
    settings = {**target.launcher_settings, **invocation.settings, "binary": binary}
    context = LauncherContext(
        target, settings, session.config, f"{target.where}.launcher", session.sink(target)
    )
    return WrapperLauncher(context, invocation)


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """The whole wrapper: translate, resolve the VM's credentials, launch (or plan)."""
    plan = bool(argv) and argv[0] == PLAN_FLAG
    if plan:
        argv = argv[1:]
    if {*argv} in PASS_THROUGH and len(argv) == 1:
        binary = real_binary(environ)
        os.execv(shutil.which(binary) or binary, [binary, *argv])  # noqa: S606 (no secrets)
    invocation = parse_argv(argv)
    if not plan:
        check_inherited_fds(invocation)
    name = environ.get(VM_ENV)
    if not name:
        raise ConfigError(
            f"{VM_ENV} is not set: it names the VM target whose credentials this VM gets "
            "(the NixOS module sets it in microvm@NAME.service)"
        )
    config = load_config(environ.get("CREDBRIDGE_CONFIG"))
    with Session(config) as session:
        launcher = open_launcher(session, name, invocation, real_binary(environ))
        target = launcher.target
        mode = Mode.DRY_RUN if plan else Mode.DELIVER
        values, _skipped = session.resolve_targets([target], mode, tolerate=plan)
        try:
            if plan:
                import json

                print(json.dumps(launcher.plan(values[target.name]), indent=2))
                return 0
            return launcher.launch(session.deliveries(target, values[target.name]))
        finally:
            for value in values[target.name].values():
                if isinstance(value, Secret):
                    value.wipe()


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point: ``credbridge-cloud-hypervisor [cloud-hypervisor args]``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.WARNING)
    try:
        return run(sys.argv[1:] if argv is None else list(argv), os.environ)
    except CredbridgeError as error:
        for line in str(error).splitlines():
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return int(error.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


__all__ = [
    "OPTION_KEYS",
    "Invocation",
    "UntranslatableArgument",
    "WrapperLauncher",
    "main",
    "parse_argv",
    "run",
]


if __name__ == "__main__":
    sys.exit(main())
