"""``cloud-hypervisor`` — start a microVM through cloud-hypervisor's REST API, secrets in the body.

The launcher runs in the foreground (``ExecStart=credbridge launch NAME``)::

    BINARY --api-socket path=RUNTIME/api.sock [extra_args]     (no VM options, no secrets)
    GET  /api/v1/vmm.ping      until it answers (bounded by ``timeout``)
    PUT  /api/v1/vm.create     VmConfig with platform.oem_strings / fs / memory.shared
    PUT  /api/v1/vm.boot
    ... wait for the process; its exit status is credbridge's.

The credentials reach the hypervisor only through the API socket, which lives in a 0700
runtime directory: never in argv, the environment, a log line or a file on persistent disk.
cloud-hypervisor logs the whole ``VmConfig`` (OEM strings included) at ``-v``, so the launcher
refuses ``-v`` while the VM has credentials. SIGTERM, SIGINT and SIGHUP are forwarded to
cloud-hypervisor (which shuts the VMM down on them); the VM's exit status is credbridge's.

``oem_strings_on_cmdline = true`` is the explicit, warned opt-in for hypervisors driven by the
command line only: the whole VM is then described by flags and the OEM strings are visible in
``/proc/PID/cmdline`` to every local user. Only ``io.systemd.credential.binary:NAME=BASE64``
strings are allowed there (no ``,[]"`` or spaces: cloud-hypervisor's ``--platform`` parser
cannot carry them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credbridge.core import (
    ConfigError,
    Delivery,
    Launcher,
    LauncherContext,
    LaunchError,
    Pending,
    Secret,
)
from credbridge.core.vm import VmChannel, VmSink
from credbridge.launchers.ch_api import API_PREFIX, ApiClient, answer_redactor
from credbridge.launchers.ch_vmconfig import (
    UnsafeForCommandLine,
    build_vm_config,
    redact_argv,
    redact_oem,
    vm_config_to_cli,
)
from credbridge.launchers.hooks.cloud_hypervisor import SETTINGS
from credbridge.launchers.runtime import (
    SOCKET_PATH_MAX,
    LaunchInterrupted,
    RuntimeSettings,
    VmRuntime,
    exit_status,
)
from credbridge.launchers.vmspec import TableChecks, vm_spec

log = logging.getLogger(__name__)

NAME = "cloud-hypervisor"
CHANNELS = ("oem_strings", "virtiofs")
"""The VM channels it maps onto cloud-hypervisor (its API has no fw_cfg items)."""
DEFAULT_BINARY = "cloud-hypervisor"
SOCKET_NAME = "api.sock"
VIRTIO_FS_TAG_MAX = 36
#: The only OEM string form allowed on a command line (research §2.2: no ``,[]"``/spaces).
_CMDLINE_OEM = re.compile(
    rb"io\.systemd\.credential\.binary:[A-Za-z0-9_.@-]{1,255}=[A-Za-z0-9+/]*={0,2}"
)
_VERBOSE_ARG = re.compile(r"-v+|--verbose")
_POLL = 0.01
MAX_VERBOSE = 8  # cloud-hypervisor knows -v, -vv, -vvv; a huge count would only build argv


@dataclass
class LaunchSpec:
    """What one launch sends: the argv and the ``vm.create`` body (none in CLI mode)."""

    argv: list[str]
    body: dict[str, Any] | None
    socket: Path


class CloudHypervisorLauncher(Launcher):
    def __init__(self, context: LauncherContext) -> None:
        self.target = context.target
        self.label = context.config.label
        settings = context.read_settings(SETTINGS)
        self.vm = vm_spec(context.target.name, settings, context.config, context.where)
        checks = self.checks = TableChecks(context.config, context.where)
        verbose = settings["verbose"]
        if isinstance(verbose, bool):
            verbose = int(verbose)
        if not isinstance(verbose, int) or not 0 <= verbose <= MAX_VERBOSE:
            raise checks.fail("verbose", f"must be true/false or a count from 0 to {MAX_VERBOSE}")
        self.verbose = verbose
        self.on_cmdline: bool = settings["oem_strings_on_cmdline"]
        if "oem_strings" in settings["platform"]:
            raise checks.fail(
                "platform.oem_strings",
                "OEM strings come from the VM's credentials (sink), not from this table",
            )
        self.platform: dict[str, Any] = dict(settings["platform"])
        self.runtime = RuntimeSettings.read(settings, checks)
        self.binary = self.vm.binary or DEFAULT_BINARY
        for arg in self.vm.extra_args:
            if arg == "--api-socket" or arg.startswith("--api-socket="):
                raise checks.fail("extra_args", "the launcher owns --api-socket")
            if arg == "--platform" or arg.startswith("--platform="):
                raise checks.fail(
                    "extra_args",
                    "use the 'platform' table instead of --platform (it may be given only once)",
                )
        if context.target.sink == "fw-cfg":
            raise ConfigError(
                "cloud-hypervisor's API has no fw_cfg items (stock builds lack the feature): "
                'use sink = "oem-strings" or "virtiofs"',
                file=self.label,
                key=f"{context.target.where}.sink",
            )
        if not isinstance(context.sink, VmSink):
            raise ConfigError(
                f"sink {context.target.sink!r} is not a VM sink",
                file=self.label,
                key=f"{context.target.where}.sink",
            )
        self.sink: VmSink = context.sink

    # ------------------------------------------------------------------ checks

    def _check_verbose(self, has_secrets: bool) -> None:
        """cloud-hypervisor logs the whole VmConfig (OEM strings included) at -v."""
        if not has_secrets:
            return
        if self.verbose or any(_VERBOSE_ARG.fullmatch(a) for a in self.vm.extra_args):
            raise self.checks.fail(
                "verbose" if self.verbose else "extra_args",
                "refusing to run cloud-hypervisor with -v while the VM has credentials: "
                "at -v it logs the whole VM config, secrets included",
            )

    def _argv(self, socket_path: Path) -> list[str]:
        argv = [self.binary, "--api-socket", f"path={socket_path}"]
        argv += ["-v"] * self.verbose
        argv += list(self.vm.extra_args)
        return argv

    def _fs_entries(self, channel: VmChannel, sockets: Sequence[Path]) -> list[dict[str, Any]]:
        entries = []
        for share, sock in zip(channel.virtiofs, sockets, strict=True):
            if not 0 < len(share.tag.encode()) <= VIRTIO_FS_TAG_MAX:
                raise ConfigError(
                    f"virtiofs tag {share.tag!r} must be 1-{VIRTIO_FS_TAG_MAX} bytes",
                    file=self.label,
                    key=f"{self.target.where}.sink",
                )
            entries.append(
                {"tag": share.tag, "socket": str(sock), "num_queues": 1, "queue_size": 1024}
            )
        return entries

    def _check_channel(self, channel: VmChannel) -> None:
        if channel.fw_cfg:
            raise LaunchError(
                f"{self.target.name}: sink {channel.sink!r} produced fw_cfg items, which "
                "cloud-hypervisor's API cannot carry"
            )
        channel.check_taken(self.target.name, NAME, CHANNELS)
        if self.on_cmdline:
            for index, text in enumerate(channel.oem_strings):
                if not _CMDLINE_OEM.fullmatch(text.reveal()):
                    name = channel.names[index] if index < len(channel.names) else f"#{index}"
                    raise LaunchError(
                        f"{self.target.name}/{name}: OEM string is not in the binary form "
                        "required on the command line (io.systemd.credential.binary:NAME=BASE64)"
                    )

    def build(
        self, channel: VmChannel, runtime: Path, fs_sockets: Sequence[Path], *, redact: bool
    ) -> LaunchSpec:
        """The argv and the vm.create body for a prepared channel."""
        socket_path = runtime / SOCKET_NAME
        oem = [s.reveal_text() for s in channel.oem_strings]
        if redact:
            oem = [redact_oem(s) for s in oem]
        body = build_vm_config(
            self.vm, oem, self._fs_entries(channel, fs_sockets), self.platform or None
        )
        argv = self._argv(socket_path)
        if self.on_cmdline:
            try:
                argv += vm_config_to_cli(body)
            except UnsafeForCommandLine as error:
                raise self.checks.fail(error.option, f"a value {error.problem}") from None
            return LaunchSpec(argv, None, socket_path)
        return LaunchSpec(argv, body, socket_path)

    # ------------------------------------------------------------------ plan

    def plan(self, credentials: Mapping[str, Secret | Pending]) -> Mapping[str, Any]:
        self._check_verbose(bool(credentials))
        entries = self.sink.plan(credentials)
        names = [spec.name for spec in self.target.credentials if spec.name in credentials]
        channel = self.sink.preview(names, self.vm.runtime_dir)
        if channel.fw_cfg:
            self._check_channel(channel)
        channel.check_taken(self.target.name, NAME, CHANNELS)
        sockets_dir = self.vm.runtime_dir / "sockets"
        fs_sockets = [sockets_dir / f"virtiofsd-{s.tag}.sock" for s in channel.virtiofs]
        spec = self.build(channel, self.vm.runtime_dir, fs_sockets, redact=True)
        helpers = self._helper_plan(channel, fs_sockets)
        # The keys of credbridge.core.types.PLAN_KEYS, as every launcher's plan has them.
        plan: dict[str, Any] = {
            "target": self.target.name,
            "launcher": NAME,
            "sink": self.target.sink,
            "delivery": self.target.sink if spec.body is not None else "command line",
            "binary": spec.argv[0],
            "version": None,
            "runtime_dir": str(self.vm.runtime_dir),
            "argv": redact_argv(spec.argv),
            "helpers": helpers,
            "requests": [],
            "credentials": [
                {"credential": e.credential, "change": e.change.value, "detail": e.detail}
                for e in entries
            ],
            "warnings": [],
        }
        if spec.body is not None:
            plan["requests"] = [
                {"method": "GET", "endpoint": API_PREFIX + "vmm.ping"},
                {"method": "PUT", "endpoint": API_PREFIX + "vm.create", "body": spec.body},
                {"method": "PUT", "endpoint": API_PREFIX + "vm.boot"},
            ]
        else:
            plan["warnings"].append(CMDLINE_WARNING)
        return plan

    def _helper_plan(self, channel: VmChannel, sockets: Sequence[Path]) -> list[list[str]]:
        if not channel.virtiofs:
            return []
        try:
            daemon = self.runtime.find_virtiofsd()
        except LaunchError as error:
            return [[f"virtiofsd: {error}"]]
        return [
            self.runtime.virtiofsd_argv(daemon, share, sock)
            for share, sock in zip(channel.virtiofs, sockets, strict=True)
        ]

    # ------------------------------------------------------------------ launch

    def runtime_dir(self) -> Path:
        return self.vm.runtime_dir

    def check(self) -> None:
        self.runtime.check(self.vm, self.checks)

    def launch(self, deliveries: Sequence[Delivery]) -> int:
        self._check_verbose(bool(deliveries))
        vm = self.vm
        socket_path = vm.runtime_dir / SOCKET_NAME
        if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
            raise self.checks.fail(
                "runtime_dir",
                f"API socket path {socket_path} is longer than {SOCKET_PATH_MAX} bytes",
            )
        with self.runtime.runtime(vm, self.checks) as rt:
            try:
                return self._run(rt, deliveries)
            except LaunchInterrupted as stop:
                return stop.status

    def _run(self, rt: VmRuntime, deliveries: Sequence[Delivery]) -> int:
        vm = self.vm
        channel = rt.prepare(self.sink, deliveries)
        self._check_channel(channel)
        sockets: list[Path] = []
        if channel.virtiofs:
            daemon = self.runtime.find_virtiofsd()
            for share in channel.virtiofs:
                sockets.append(
                    rt.start_virtiofsd(share, daemon, extra_args=self.runtime.virtiofsd_args)
                )
        spec = self.build(channel, rt.path, sockets, redact=False)
        if self.on_cmdline and channel.oem_strings:
            log.warning("VM %s: %s (oem_strings_on_cmdline = true)", vm.name, CMDLINE_WARNING)
        log.info("starting %s for VM %s", " ".join(redact_argv(spec.argv)), vm.name)
        process = rt.start(spec.argv)
        if spec.body is None:
            # CLI mode: cloud-hypervisor boots the VM from its flags; nothing to send.
            names = ", ".join(channel.names) or "none"
            log.info("VM %s started from flags with credentials: %s", vm.name, names)
            return rt.wait()
        api = ApiClient(spec.socket, vm.timeout, answer_redactor(channel, deliveries))
        try:
            rt.wait_for_path(spec.socket, "cloud-hypervisor API socket", process=process)
            self._wait_ping(rt, api, process)
            body = json.dumps(spec.body).encode()
            spec.body = None
            rt.check()
            try:
                api.put("vm.create", body)
            finally:
                # The hypervisor has the values now; the redactor's hashes stay for the
                # calls that could still echo them (vm.boot, vmm.shutdown).
                del body
                for oem in channel.oem_strings:
                    oem.wipe()
            rt.check()
            self._after_create(api)
            rt.check()
            api.put("vm.boot")
        except LaunchError as error:
            if not isinstance(error, LaunchInterrupted) and process.poll() is None:
                with contextlib.suppress(LaunchError):
                    api.put("vmm.shutdown")
            raise
        log.info("VM %s booted with credentials: %s", vm.name, ", ".join(channel.names) or "none")
        return rt.wait()

    def _after_create(self, api: ApiClient) -> None:
        """Requests between ``vm.create`` and ``vm.boot``: none here (see the wrapper)."""

    def _wait_ping(self, rt: VmRuntime, api: ApiClient, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.vm.timeout
        while not api.ping():
            rt.check()
            if process.poll() is not None:
                raise LaunchError(
                    f"cloud-hypervisor exited with status {exit_status(process.returncode)} "
                    "before its API answered"
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"cloud-hypervisor's API ({API_PREFIX}vmm.ping) did not answer within "
                    f"{self.vm.timeout:g}s"
                )
            time.sleep(_POLL)


CMDLINE_WARNING = (
    "OEM strings are on cloud-hypervisor's command line: every local user can read them "
    "in /proc/PID/cmdline"
)
