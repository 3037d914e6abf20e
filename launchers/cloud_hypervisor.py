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
import http.client
import json
import logging
import os
import re
import socket
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
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    read_answer,
    socket_deadline,
)
from credbridge.core.settings import seconds_setting
from credbridge.core.vm import VmChannel, VmSink
from credbridge.launchers.runtime import (
    RUNTIME_SETTINGS,
    SOCKET_PATH_MAX,
    LaunchInterrupted,
    VmRuntime,
    check_runtime_dir,
    exit_status,
    find_virtiofsd,
    virtiofsd_argv,
)
from credbridge.launchers.vmspec import ConsoleSpec, VmSpec, parse_vm_spec

log = logging.getLogger(__name__)

NAME = "cloud-hypervisor"
CHANNELS = ("oem_strings", "virtiofs")
"""The VM channels it maps onto cloud-hypervisor (its API has no fw_cfg items)."""
DEFAULT_BINARY = "cloud-hypervisor"
API_PREFIX = "/api/v1/"
SOCKET_NAME = "api.sock"
REDACTED = "<redacted>"
API_ANSWER_LIMIT = 1 << 20
"""Bytes an API answer may have (cloud-hypervisor's are a few KiB)."""
EXTRA_KEYS = frozenset({"verbose", "oem_strings_on_cmdline", "platform"}) | RUNTIME_SETTINGS
VIRTIO_FS_TAG_MAX = 36
#: The only OEM string form allowed on a command line (research §2.2: no ``,[]"``/spaces).
_CMDLINE_OEM = re.compile(
    rb"io\.systemd\.credential\.binary:[A-Za-z0-9_.@-]{1,255}=[A-Za-z0-9+/]*={0,2}"
)
_CLI_UNSAFE = re.compile(r'[,\[\]"\s]')
_VERBOSE_ARG = re.compile(r"-v+|--verbose")
_POLL = 0.01
MAX_VERBOSE = 8  # cloud-hypervisor knows -v, -vv, -vvv; a huge count would only build argv
_CONSOLE_MODE = {
    "off": "Off",
    "null": "Null",
    "tty": "Tty",
    "pty": "Pty",
    "file": "File",
    "socket": "Socket",
}


# --------------------------------------------------------------------------- API client


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over an AF_UNIX stream socket (cloud-hypervisor's API socket)."""

    def __init__(self, path: Path, timeout: float, fds: Sequence[int] = ()) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._fds = list(fds)

    def send(self, data: Any) -> None:
        """The request's first bytes carry ``fds`` (SCM_RIGHTS), as cloud-hypervisor's HTTP
        server expects for ``vm.add-net`` (it reads each request with its ancillary data)."""
        if not self._fds or not isinstance(data, bytes):
            super().send(data)
            return
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        fds, self._fds = self._fds, []
        sent = socket.send_fds(self.sock, [data], fds)
        self.sock.sendall(data[sent:])

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """Requests to cloud-hypervisor's REST API. Errors name the endpoint and the HTTP status.

    Request bodies never appear in an error or a log line; a response body is quoted only when
    it shares no 8-byte run with a value, its Base64 or hex (cloud-hypervisor may echo its
    config). The ``redactor`` keeps hashes of those runs, not the values.
    """

    def __init__(self, path: Path, timeout: float, redactor: Redactor | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.redactor = redactor if redactor is not None else Redactor(min_length=1)

    def call(
        self, method: str, endpoint: str, body: bytes | None = None, fds: Sequence[int] = ()
    ) -> tuple[int, bytes]:
        connection = _UnixHTTPConnection(self.path, self.timeout, fds)
        try:
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, API_PREFIX + endpoint, body=body, headers=headers)
            # The socket timeout bounds each read; the headers, then the body as a whole, get
            # the same time.
            with socket_deadline(connection.sock, self.timeout) as expired:
                try:
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException):
                    if expired.is_set():
                        raise AnswerTooSlow(f"did not arrive within {self.timeout:g}s") from None
                    raise
            answer = read_answer(response.read1, timeout=self.timeout, limit=API_ANSWER_LIMIT)
            return response.status, answer
        finally:
            connection.close()

    def ping(self) -> bool:
        try:
            status, _ = self.call("GET", "vmm.ping")
        except (OSError, http.client.HTTPException, AnswerRefused):
            return False
        return status == 200

    def put(self, endpoint: str, body: bytes | None = None, fds: Sequence[int] = ()) -> None:
        try:
            status, answer = self.call("PUT", endpoint, body, fds)
        except AnswerRefused as error:
            raise LaunchError(
                f"cloud-hypervisor API PUT {API_PREFIX}{endpoint}: the answer {error.reason}"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise LaunchError(
                f"cloud-hypervisor API PUT {API_PREFIX}{endpoint}: {reason}"
            ) from None
        if status not in (200, 204):
            raise LaunchError(
                f"cloud-hypervisor API PUT {API_PREFIX}{endpoint} failed: HTTP {status}"
                f"{self._quote(answer)}"
            )

    def _quote(self, answer: bytes) -> str:
        return self.redactor.quote(answer)


# --------------------------------------------------------------------------- VmConfig


@dataclass
class LaunchSpec:
    """What one launch sends: the argv and the ``vm.create`` body (none in CLI mode)."""

    argv: list[str]
    body: dict[str, Any] | None
    socket: Path


def console_config(spec: ConsoleSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": _CONSOLE_MODE[spec.mode]}
    if spec.mode == "file":
        out["file"] = str(spec.path)
    elif spec.mode == "socket":
        out["socket"] = str(spec.path)
    return out


def build_vm_config(
    vm: VmSpec,
    oem_strings: Sequence[str],
    fs: Sequence[Mapping[str, Any]] = (),
    platform: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``VmConfig`` JSON object (components/schemas/VmConfig of the OpenAPI spec)."""
    payload: dict[str, Any] = {}
    if vm.kernel is not None:
        payload["kernel"] = str(vm.kernel)
    if vm.firmware is not None:
        payload["firmware"] = str(vm.firmware)
    if vm.initramfs is not None:
        payload["initramfs"] = str(vm.initramfs)
    if vm.cmdline:
        payload["cmdline"] = vm.cmdline
    body: dict[str, Any] = {
        "payload": payload,
        "cpus": {"boot_vcpus": vm.cpus, "max_vcpus": vm.cpus},
        # vhost-user devices (virtiofs) need the guest memory shared with the daemon.
        "memory": {"size": vm.memory_bytes, "shared": bool(fs)},
        "serial": console_config(vm.serial),
        "console": console_config(vm.console),
    }
    if vm.disks:
        body["disks"] = [
            {**disk.options, "path": str(disk.path), "readonly": disk.readonly} for disk in vm.disks
        ]
    if vm.net:
        body["net"] = [dict(n) for n in vm.net]
    if fs:
        body["fs"] = [dict(f) for f in fs]
    merged = dict(platform or {})
    if oem_strings:
        merged["oem_strings"] = list(oem_strings)
    if merged:
        body["platform"] = merged
    return body


class UnsafeForCommandLine(ConfigError):
    """A value cloud-hypervisor's option parser cannot carry (``key`` names it)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            "cannot be put on cloud-hypervisor's command line (no commas, brackets, quotes or "
            "spaces); drop oem_strings_on_cmdline to use the API",
            key=key,
        )


def _cli_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and not _CLI_UNSAFE.search(value):
        return value
    raise UnsafeForCommandLine(where)


def _cli_options(table: Mapping[str, Any], where: str) -> str:
    return ",".join(f"{key}={_cli_value(value, f'{where}.{key}')}" for key, value in table.items())


def _cli_size(size: int) -> str:
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _cli_console(table: Mapping[str, Any]) -> str:
    mode = str(table["mode"]).lower()
    if "file" in table:
        return f"file={_cli_value(table['file'], 'file')}"
    if "socket" in table:
        return f"socket={_cli_value(table['socket'], 'socket')}"
    return mode


def vm_config_to_cli(body: Mapping[str, Any]) -> list[str]:
    """Command-line flags that describe the same VM as ``body`` (opt-in CLI mode only)."""
    args: list[str] = []
    payload = body["payload"]
    for key in ("kernel", "firmware", "initramfs"):
        if key in payload:
            args += [f"--{key}", payload[key]]
    if "cmdline" in payload:
        args += ["--cmdline", payload["cmdline"]]
    cpus = body["cpus"]
    args += ["--cpus", f"boot={cpus['boot_vcpus']},max={cpus['max_vcpus']}"]
    memory = body["memory"]
    shared = "on" if memory.get("shared") else "off"
    args += ["--memory", f"size={_cli_size(memory['size'])},shared={shared}"]
    for index, disk in enumerate(body.get("disks", [])):
        args += ["--disk", _cli_options(disk, f"disks[{index}]")]
    for index, net in enumerate(body.get("net", [])):
        args += ["--net", _cli_options(net, f"net[{index}]")]
    for index, fs in enumerate(body.get("fs", [])):
        args += ["--fs", _cli_options(fs, f"fs[{index}]")]
    args += ["--serial", _cli_console(body["serial"]), "--console", _cli_console(body["console"])]
    platform = dict(body.get("platform", {}))
    oem = platform.pop("oem_strings", [])
    parts = [_cli_options(platform, "platform")] if platform else []
    if oem:
        parts.append("oem_strings=[" + ",".join(oem) + "]")
    if parts:
        args += ["--platform", ",".join(parts)]
    return args


def redact_oem(text: str) -> str:
    """``io.systemd.credential.binary:NAME=BASE64`` -> ``...:NAME=<redacted>``."""
    head, sep, _ = text.partition("=")
    return f"{head}={REDACTED}" if sep else REDACTED


def redact_argv(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for index, arg in enumerate(out):
        if index and out[index - 1] == "--platform" and "oem_strings=" in arg:
            head, _, rest = arg.partition("oem_strings=[")
            strings, _, tail = rest.partition("]")
            redacted = ",".join(redact_oem(s) for s in strings.split(",") if s)
            out[index] = f"{head}oem_strings=[{redacted}]{tail}"
    return out


# --------------------------------------------------------------------------- the launcher


class CloudHypervisorLauncher(Launcher):
    def __init__(self, context: LauncherContext) -> None:
        self.context = context
        self.target = context.target
        label = context.config.label
        self.label = label
        self.where = context.where
        self.vm = parse_vm_spec(
            context.target.name,
            context.settings,
            context.config,
            context.where,
            extra_keys=EXTRA_KEYS,
            default_serial="tty",
            default_console="off",
            launcher="cloud-hypervisor",
        )
        settings = context.settings
        verbose = settings.get("verbose", 0)
        if isinstance(verbose, bool):
            verbose = int(verbose)
        if not isinstance(verbose, int) or not 0 <= verbose <= MAX_VERBOSE:
            raise ConfigError(
                f"must be true/false or a count from 0 to {MAX_VERBOSE}",
                file=label,
                key=f"{self.where}.verbose",
            )
        self.verbose = verbose
        self.on_cmdline = _bool(settings, "oem_strings_on_cmdline", label, self.where)
        platform = settings.get("platform", {})
        if not isinstance(platform, Mapping):
            raise ConfigError(
                "must be a table of PlatformConfig keys", file=label, key=f"{self.where}.platform"
            )
        if "oem_strings" in platform:
            raise ConfigError(
                "OEM strings come from the VM's credentials (sink), not from this table",
                file=label,
                key=f"{self.where}.platform.oem_strings",
            )
        self.platform = dict(platform)
        self.allow_persistent = _bool(settings, "allow_persistent", label, self.where)
        self.stop_timeout = seconds_setting(
            settings.get("stop_timeout", 10), file=label, key=f"{self.where}.stop_timeout"
        )
        virtiofsd = settings.get("virtiofsd")
        if virtiofsd is not None and not isinstance(virtiofsd, str):
            raise ConfigError("must be a program path", file=label, key=f"{self.where}.virtiofsd")
        self.virtiofsd: str | None = virtiofsd
        virtiofsd_args = settings.get("virtiofsd_args", [])
        if not isinstance(virtiofsd_args, list) or not all(
            isinstance(a, str) for a in virtiofsd_args
        ):
            raise ConfigError(
                "must be a list of strings", file=label, key=f"{self.where}.virtiofsd_args"
            )
        self.virtiofsd_args: tuple[str, ...] = tuple(virtiofsd_args)
        self.binary = self.vm.binary or DEFAULT_BINARY
        for arg in self.vm.extra_args:
            if arg == "--api-socket" or arg.startswith("--api-socket="):
                raise ConfigError(
                    "the launcher owns --api-socket", file=label, key=f"{self.where}.extra_args"
                )
            if arg == "--platform" or arg.startswith("--platform="):
                raise ConfigError(
                    "use the 'platform' table instead of --platform (it may be given only once)",
                    file=label,
                    key=f"{self.where}.extra_args",
                )
        if context.target.sink == "fw-cfg":
            raise ConfigError(
                "cloud-hypervisor's API has no fw_cfg items (stock builds lack the feature): "
                'use sink = "oem-strings" or "virtiofs"',
                file=label,
                key=f"{context.target.where}.sink",
            )
        if not isinstance(context.sink, VmSink):
            raise ConfigError(
                f"sink {context.target.sink!r} is not a VM sink",
                file=label,
                key=f"{context.target.where}.sink",
            )
        self.sink: VmSink = context.sink

    # ------------------------------------------------------------------ checks

    def _check_verbose(self, has_secrets: bool) -> None:
        """cloud-hypervisor logs the whole VmConfig (OEM strings included) at -v."""
        if not has_secrets:
            return
        if self.verbose or any(_VERBOSE_ARG.fullmatch(a) for a in self.vm.extra_args):
            raise ConfigError(
                "refusing to run cloud-hypervisor with -v while the VM has credentials: "
                "at -v it logs the whole VM config, secrets included",
                file=self.label,
                key=f"{self.where}.verbose" if self.verbose else f"{self.where}.extra_args",
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
                raise ConfigError(
                    "a value cannot be put on cloud-hypervisor's command line (no commas, "
                    "brackets, quotes or spaces); drop oem_strings_on_cmdline to use the API",
                    file=self.label,
                    key=f"{self.where}.{error.key}",
                ) from None
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
            daemon = find_virtiofsd(self.virtiofsd)
        except LaunchError as error:
            return [[f"virtiofsd: {error}"]]
        return [
            virtiofsd_argv(daemon, share, sock, extra_args=self.virtiofsd_args)
            for share, sock in zip(channel.virtiofs, sockets, strict=True)
        ]

    # ------------------------------------------------------------------ launch

    def runtime_dir(self) -> Path:
        return self.vm.runtime_dir

    def check(self) -> None:
        check_runtime_dir(
            self.vm.runtime_dir,
            allow_persistent=self.allow_persistent,
            config_file=self.label,
            key=f"{self.where}.runtime_dir",
        )

    def launch(self, deliveries: Sequence[Delivery]) -> int:
        self._check_verbose(bool(deliveries))
        vm = self.vm
        socket_path = vm.runtime_dir / SOCKET_NAME
        if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
            raise ConfigError(
                f"API socket path {socket_path} is longer than {SOCKET_PATH_MAX} bytes",
                file=self.label,
                key=f"{self.where}.runtime_dir",
            )
        runtime = VmRuntime(
            vm.name,
            vm.runtime_dir,
            allow_persistent=self.allow_persistent,
            startup_timeout=vm.timeout,
            stop_timeout=self.stop_timeout,
            config_file=self.label,
            key=f"{self.where}.runtime_dir",
        )
        with runtime as rt:
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
            daemon = find_virtiofsd(self.virtiofsd)
            for share in channel.virtiofs:
                sockets.append(rt.start_virtiofsd(share, daemon, extra_args=self.virtiofsd_args))
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
        api = ApiClient(spec.socket, vm.timeout, _redactor(channel, deliveries))
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


def _bool(settings: Mapping[str, Any], key: str, label: str, where: str) -> bool:
    value = settings.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError("must be true or false", file=label, key=f"{where}.{key}")
    return value


CMDLINE_WARNING = (
    "OEM strings are on cloud-hypervisor's command line: every local user can read them "
    "in /proc/PID/cmdline"
)


def _redactor(channel: VmChannel, deliveries: Sequence[Delivery]) -> Redactor:
    """What an API error answer must not quote: values (and their Base64/hex), OEM payloads."""
    # Even a short value counts: withholding a harmless answer is cheap, quoting a secret is not.
    redactor = Redactor(min_length=1)
    for delivery in deliveries:
        redactor.add(delivery.value)
    for text in channel.oem_strings:
        redactor.add(text.reveal().partition(b"=")[2], derived=False)
    return redactor
