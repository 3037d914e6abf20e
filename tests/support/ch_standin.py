"""A stand-in for cloud-hypervisor's API, not cloud-hypervisor.

cloud-hypervisor cannot run on the test machines (no KVM), so the cloud-hypervisor launcher is
tested against this program, started exactly the way the launcher starts the real binary::

    ch_standin.py [--standin-* options] --api-socket path=SOCK [cloud-hypervisor flags]

(tests write a small executable wrapper that adds the ``--standin-*`` options, and point the
launcher's ``binary`` at it). It serves the endpoints the launcher uses on the UNIX socket —
``GET /api/v1/vmm.ping``, ``PUT /api/v1/vm.create``, ``vm.boot``, ``vm.shutdown``,
``vmm.shutdown``, ``vm.power-button`` (noboot mode), ``GET vm.info``, ``vm.add-net`` (cold, before
``vm.boot``) — and checks every request against the vendored OpenAPI spec
(unknown endpoint or method: 404/405; a ``vm.create`` body that is not a valid ``VmConfig``, or
that carries keys the spec does not declare: 400).

``--standin-mode boot`` boots the requested kernel/initramfs under QEMU (TCG) on ``vm.boot``:
``platform.oem_strings`` become one SMBIOS type 11 structure, byte for byte what
cloud-hypervisor writes, loaded with ``-smbios file=`` from a 0400 file in the stand-in's own
0700 directory (QEMU 7.2's ``-smbios type=11,path=`` appends garbage before 7.2.18, and
``value=`` would put the strings in QEMU's argv); ``fs`` entries become vhost-user-fs devices
with shared memory; serial ``Tty`` is QEMU's stdio. When the guest powers off, the stand-in
exits 0 like cloud-hypervisor does. ``--standin-mode noboot`` only answers the API (for
signal tests and the benchmark; ``vm.power-button`` there stands for a guest that powers off
at once: the stand-in answers 204 and exits 0, as cloud-hypervisor does when its guest powers
off; in boot mode it is refused with 500, the stand-in has no ACPI path into its QEMU);
``--standin-exit N`` makes it exit with N right after
``vm.boot``, as a VMM whose guest failed would.

Without ``--standin-spec`` it serves the same endpoints (:data:`ENDPOINTS`) and leaves out
only the schema checks.

``--standin-record FILE`` appends one JSON line per request: method, path, status, problem,
and for ``vm.create`` the *names* in the OEM strings (never values).

``--standin-echo create|boot`` makes ``vm.create`` (400) or ``vm.boot`` (500) fail with an
error answer that quotes *parts* of the first OEM string: 12 characters from the middle of its
Base64 and 10 bytes from the middle of the decoded value, the way a real server's parser
error quotes the input near the fault. It exists to prove the launcher withholds such answers.
``--standin-capture DIR`` (recording mode, for tests that must compare the bytes the VM would
get) keeps, in DIR (0700, made if missing): ``standin-PID.json`` (pid, uid, gid and the
parent-death signal the process was started with), ``vm.create-PID.json`` (the exact body,
0400) and ``standin-PID.exit.json`` (the signal that ended it, if any, and the exit status).

Signals: SIGTERM and SIGINT shut the stand-in down with status 0, as cloud-hypervisor's VMM
does; SIGHUP ends it with 128+1, as a process killed by it.
"""

from __future__ import annotations

import argparse
import array
import base64
import binascii
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

API = "/api/v1/"
QEMU = "qemu-system-x86_64"
BASE_QEMU = [
    "-accel", "tcg", "-cpu", "max", "-M", "q35", "-nodefaults", "-no-user-config",
    "-nographic", "-monitor", "none", "-no-reboot",
]  # fmt: skip


# --------------------------------------------------------------------------- the spec

ENDPOINTS: dict[str, dict[str, dict[str, Any]]] = {
    "/vmm.ping": {"get": {}},
    "/vm.create": {"put": {"requestBody": True}},
    "/vm.boot": {"put": {}},
    "/vm.info": {"get": {}},
    "/vm.shutdown": {"put": {}},
    "/vmm.shutdown": {"put": {}},
    "/vm.power-button": {"put": {}},
    "/vm.add-net": {"put": {"requestBody": True}},
}
"""The endpoints served when no spec is given (their shape in the spec: no body but vm.create's)."""


def load_spec(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = yaml.safe_load(handle)
    return data


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def unknown_keys(
    instance: Any, schema: dict[str, Any], spec: dict[str, Any], at: str = ""
) -> list[str]:
    """Keys of ``instance`` that the schema does not declare (the spec allows them silently)."""
    schema = _resolve(schema, spec)
    found: list[str] = []
    if isinstance(instance, dict) and "properties" in schema:
        props = schema["properties"]
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if key in props:
                found += unknown_keys(value, props[key], spec, f"{at}.{key}")
            elif isinstance(extra, dict):
                found += unknown_keys(value, extra, spec, f"{at}.{key}")
            elif extra is not True:
                found.append(f"{at}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            found += unknown_keys(item, schema["items"], spec, f"{at}[{index}]")
    return found


def schema_problems(instance: Any, name: str, spec: dict[str, Any]) -> list[str]:
    """Validation problems of ``instance`` against ``components/schemas/NAME`` (no values)."""
    from openapi_schema_validator import OAS30Validator

    root = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    validator = OAS30Validator(root)
    problems = [
        f"{error.json_path}: {error.validator} check failed"
        for error in validator.iter_errors(instance)
    ]
    problems += [
        f"{key}: not declared by {name}"
        for key in unknown_keys(instance, {"$ref": f"#/components/schemas/{name}"}, spec)
    ]
    return problems


# --------------------------------------------------------------------------- SMBIOS


def smbios_type11(strings: list[str]) -> bytes:
    """One SMBIOS type 11 structure holding every OEM string, as cloud-hypervisor writes it."""
    if len(strings) > 255:
        raise ValueError("more than 255 OEM strings")
    encoded = []
    for text in strings:
        data = text.encode("utf-8")
        if not data or b"\0" in data:
            raise ValueError("empty OEM string or NUL in an OEM string")
        encoded.append(data + b"\0")
    header = struct.pack("<BBHB", 11, 5, 0x0B00, len(strings))
    return header + b"".join(encoded) + (b"\0" if encoded else b"\0\0")


# --------------------------------------------------------------------------- CLI mode


def _split_options(text: str) -> dict[str, str]:
    """``a=1,b=[x,y],c=z`` -> dict (bracket-aware, like cloud-hypervisor's option parser)."""
    out: dict[str, str] = {}
    depth, start = 0, 0
    parts = []
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    for part in parts:
        if part:
            key, _, value = part.partition("=")
            out[key] = value
    return out


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def _typed(value: str) -> Any:
    if value in {"on", "off"}:
        return value == "on"
    if value.isdigit():
        return int(value)
    return value


def _console(text: str) -> dict[str, Any]:
    if text.startswith("file="):
        return {"mode": "File", "file": text[5:]}
    if text.startswith("socket="):
        return {"mode": "Socket", "socket": text[7:]}
    return {"mode": text.capitalize()}


def config_from_cli(args: argparse.Namespace) -> dict[str, Any] | None:
    """The VmConfig cloud-hypervisor builds from its flags (None: no payload on the CLI)."""
    if not args.kernel and not args.firmware:
        return None
    payload = {
        k: v
        for k, v in (
            ("kernel", args.kernel),
            ("firmware", args.firmware),
            ("initramfs", args.initramfs),
            ("cmdline", args.cmdline),
        )
        if v
    }
    config: dict[str, Any] = {"payload": payload}
    cpus = _split_options(args.cpus or "boot=1")
    boot = int(cpus.get("boot", "1"))
    config["cpus"] = {"boot_vcpus": boot, "max_vcpus": int(cpus.get("max", boot))}
    memory = _split_options(args.memory or "size=512M")
    config["memory"] = {
        "size": _size(memory.get("size", "512M")),
        "shared": memory.get("shared") == "on",
    }
    for flag, key in (("disk", "disks"), ("net", "net"), ("fs", "fs")):
        values = getattr(args, flag) or []
        if values:
            config[key] = [{k: _typed(v) for k, v in _split_options(v).items()} for v in values]
    config["serial"] = _console(args.serial or "null")
    config["console"] = _console(args.console or "tty")
    if args.platform:
        platform: dict[str, Any] = {}
        for key, value in _split_options(args.platform).items():
            if key == "oem_strings":
                inner = value.strip().removeprefix("[").removesuffix("]")
                platform[key] = list(_split_options_list(inner))
            else:
                platform[key] = _typed(value)
        config["platform"] = platform
    return config


def _split_options_list(text: str) -> list[str]:
    return text.split(",") if text else []


# --------------------------------------------------------------------------- echoes


def echo_parts(config: dict[str, Any]) -> bytes:
    """An error answer quoting parts (not the whole) of the first OEM string and its value."""
    strings = config.get("platform", {}).get("oem_strings", [])
    if not strings:
        return b"Error: no OEM string to quote"
    payload = strings[0].partition("=")[2]
    try:
        value = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        value = payload.encode()
    middle_b64 = max(0, len(payload) // 2 - 6)
    middle_raw = max(0, len(value) // 2 - 5)
    raw_part = value[middle_raw : middle_raw + 10].decode("utf-8", "backslashreplace")
    return (
        f"Error parsing platform config near '{payload[middle_b64 : middle_b64 + 12]}' "
        f"(decoded: {raw_part!r})"
    ).encode()


# --------------------------------------------------------------------------- the VMM


class StandIn:
    def __init__(self, options: argparse.Namespace, spec: dict[str, Any] | None) -> None:
        self.options = options
        self.spec = spec
        self.paths = spec["paths"] if spec is not None else ENDPOINTS
        self.socket = Path(options.api_socket_path)
        self.private = Path(tempfile.mkdtemp(prefix="standin-", dir=self.socket.parent))
        os.chmod(self.private, 0o700)
        self.config: dict[str, Any] | None = None
        self.state = "NotCreated"
        self.vm: subprocess.Popen[bytes] | None = None
        self.stopping_vm = False
        self.exit_code: int | None = None
        self.pending_exit: int | None = None
        """Exit status to take once the current answer is sent."""
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.kept_fds: list[int] = []
        """Descriptors a net device took (vm.add-net), kept open as the VMM keeps them."""

    # ---------------------------------------------------------------- records

    def capture(self, name: str, data: bytes) -> None:
        """Write ``DIR/name`` once, 0400, never through a symlink (recording mode only)."""
        if not self.options.standin_capture:
            return
        directory = Path(self.options.standin_capture)
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def record(self, entry: dict[str, Any]) -> None:
        if self.options.standin_record:
            with open(self.options.standin_record, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    # ---------------------------------------------------------------- requests

    def handle(
        self, method: str, path: str, body: bytes, files: list[int] | None = None
    ) -> tuple[int, bytes, dict[str, Any]]:
        """One request; ``files`` are the descriptors that came with it (SCM_RIGHTS), owned by
        the stand-in from here on, as cloud-hypervisor's HTTP server owns them."""
        files = files or []
        try:
            return self._handle(method, path, body, files)
        finally:
            for fd in files:
                if fd not in self.kept_fds:
                    os.close(fd)

    def _handle(
        self, method: str, path: str, body: bytes, files: list[int]
    ) -> tuple[int, bytes, dict[str, Any]]:
        info: dict[str, Any] = {"method": method, "path": path}
        if not path.startswith(API) or "/" + path[len(API) :] not in self.paths:
            return 404, b"", info
        endpoint = path[len(API) :]
        operations = self.paths["/" + endpoint]
        if method.lower() not in operations:
            return 405, b"", info
        operation = operations[method.lower()]
        if "requestBody" not in operation and body:
            info["problem"] = "body sent to an endpoint that takes none"
            return 400, b"unexpected body", info
        with self.lock:
            if files and endpoint != "vm.add-net":
                # vm.create drops net fds from the socket (http_endpoint.rs); other endpoints
                # ignore their files.
                info["ignored_fds"] = len(files)
            if endpoint == "vm.add-net":
                return self._add_net(body, info, files)
            return self._dispatch(endpoint, body, info)

    def _add_net(
        self, body: bytes, info: dict[str, Any], files: list[int]
    ) -> tuple[int, bytes, dict[str, Any]]:
        """cloud-hypervisor v53's ``VmAddNet``: the request's files become ``NetConfig.fds``
        (fds in the body are ignored); before vm.boot the device is cold-added to the config
        after ``VmConfig::validate`` (204), without a created VM it is 404."""
        try:
            net = json.loads(body)
        except ValueError:
            info["problem"] = "body is not JSON"
            return 400, b"body is not JSON", info
        problems = schema_problems(net, "NetConfig", self.spec) if self.spec is not None else []
        if problems:
            info["problem"] = "; ".join(problems)
            return 400, ("invalid NetConfig: " + "; ".join(problems)).encode(), info
        if self.config is None:
            return 404, b"VmNotCreated", info
        if self.state == "Running":
            info["problem"] = "hotplug is not served by the stand-in"
            return 500, b"hotplug is not served by the stand-in", info
        info["net"] = {key: net[key] for key in ("tap", "mac", "num_queues") if key in net}
        info["net_fds"] = [list(os.fstat(fd)[1:3]) for fd in files]  # (st_ino, st_dev)
        queues = net.get("num_queues", 2)
        if files and len(files) * 2 != queues:
            info["problem"] = "VnetQueueFdMismatch"
            return 400, b"VnetQueueFdMismatch", info
        self.kept_fds.extend(files)
        self.config.setdefault("net", []).append(net)
        return 204, b"", info

    def _dispatch(
        self, endpoint: str, body: bytes, info: dict[str, Any]
    ) -> tuple[int, bytes, dict[str, Any]]:
        if endpoint == "vmm.ping":
            answer = {
                "version": "standin-0",
                "build_version": "not cloud-hypervisor",
                "pid": os.getpid(),
            }
            return 200, json.dumps(answer).encode(), info
        if endpoint == "vm.create":
            try:
                config = json.loads(body)
            except ValueError:
                info["problem"] = "body is not JSON"
                return 400, b"body is not JSON", info
            problems = (
                schema_problems(config, "VmConfig", self.spec) if self.spec is not None else []
            )
            if not isinstance(config, dict):
                problems.append("body is not a JSON object")
            info["oem_names"] = (
                [s.partition("=")[0] for s in config.get("platform", {}).get("oem_strings", [])]
                if isinstance(config, dict)
                else []
            )
            if problems:
                info["problem"] = "; ".join(problems)
                return 400, ("invalid VmConfig: " + "; ".join(problems)).encode(), info
            if self.config is not None:
                return 500, b"VmAlreadyCreated", info
            if rule := _create_time_rule(config):
                # cloud-hypervisor validates the config on vm.create (VmConfig::validate) and
                # answers 500 with the error; two rules credbridge's changes could break:
                info["problem"] = rule
                return 500, rule.encode(), info
            if self.options.standin_echo == "create":
                info["problem"] = "echo requested"
                return 400, echo_parts(config), info
            self.config = config
            self.state = "Created"
            self.capture(f"vm.create-{os.getpid()}.json", body)
            info["memory_shared"] = config.get("memory", {}).get("shared", False)
            info["fs_tags"] = [f["tag"] for f in config.get("fs", [])]
            return 204, b"", info
        if endpoint == "vm.boot":
            if self.config is None:
                return 404, b"VmNotCreated", info
            if self.state == "Running":
                return 500, b"VmAlreadyBooted", info
            if self.options.standin_echo == "boot":
                info["problem"] = "echo requested"
                return 500, echo_parts(self.config), info
            problem = self.boot()
            if problem:
                info["problem"] = problem
                return 500, problem.encode(), info
            self.state = "Running"
            return 204, b"", info
        if endpoint == "vm.info":
            if self.config is None:
                return 404, b"", info
            return 200, json.dumps({"config": self.config, "state": self.state}).encode(), info
        if endpoint == "vm.shutdown":
            if self.config is None:
                return 404, b"", info
            if self.state != "Running":
                return 405, b"", info
            self.stop_vm()
            self.state = "Shutdown"
            return 204, b"", info
        if endpoint == "vm.power-button":
            if self.config is None:
                return 404, b"", info
            if self.state != "Running":
                return 405, b"", info
            if self.options.standin_mode != "noboot":
                info["problem"] = "power-button is served in noboot mode only"
                return 500, b"power-button is served in noboot mode only", info
            self.state = "Shutdown"
            self.pending_exit = 0
            return 204, b"", info
        if endpoint == "vmm.shutdown":
            self.stop_vm()
            self.pending_exit = 0
            return 204, b"", info
        return 404, b"not served by the stand-in", info

    # ---------------------------------------------------------------- the VM

    def boot(self) -> str | None:
        assert self.config is not None
        if self.options.standin_mode == "noboot":
            if self.options.standin_exit is not None:
                self.pending_exit = self.options.standin_exit
            return None
        try:
            argv = self.qemu_argv(self.config)
        except ValueError as error:
            return f"stand-in cannot boot this config: {error}"
        self.vm = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        threading.Thread(target=self._watch_vm, daemon=True).start()
        return None

    def qemu_argv(self, config: dict[str, Any]) -> list[str]:
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise ValueError(f"{QEMU} not found")
        payload = config["payload"]
        if "kernel" not in payload:
            raise ValueError("only payload.kernel is supported")
        memory_mb = max(64, config.get("memory", {}).get("size", 512 << 20) >> 20)
        cpus = config.get("cpus", {}).get("boot_vcpus", 1)
        argv = [
            qemu,
            *BASE_QEMU,
            "-m",
            f"{memory_mb}M",
            "-smp",
            str(cpus),
            "-kernel",
            payload["kernel"],
        ]
        if "initramfs" in payload:
            argv += ["-initrd", payload["initramfs"]]
        if "cmdline" in payload:
            argv += ["-append", payload["cmdline"]]
        if config.get("memory", {}).get("shared"):
            argv += [
                "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
                "-numa", "node,memdev=mem",
            ]  # fmt: skip
        serial = config.get("serial", {"mode": "Null"})
        mode = serial["mode"]
        if mode == "Tty":
            argv += ["-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0"]
        elif mode == "File":
            argv += ["-serial", f"file:{serial['file']}"]
        elif mode == "Null":
            argv += ["-serial", "null"]
        elif mode != "Off":
            raise ValueError(f"serial mode {mode} is not supported")
        console = config.get("console", {"mode": "Tty"})
        if console["mode"] not in {"Off", "Null"}:
            raise ValueError(f"console mode {console['mode']} is not supported (use off)")
        for index, disk in enumerate(config.get("disks", [])):
            readonly = ",readonly=on" if disk.get("readonly") else ""
            argv += ["-drive", f"file={disk['path']},if=virtio,format=raw,id=d{index}{readonly}"]
        if config.get("net"):
            raise ValueError("net devices are not supported")
        for index, fs in enumerate(config.get("fs", [])):
            argv += [
                "-chardev", f"socket,id=fs{index},path={fs['socket']}",
                "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={fs['tag']}",
            ]  # fmt: skip
        oem = config.get("platform", {}).get("oem_strings", [])
        if oem:
            table = self.private / "type11.bin"
            fd = os.open(table, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
            with os.fdopen(fd, "wb") as handle:
                handle.write(smbios_type11(oem))
            argv += ["-smbios", f"file={table}"]
        return argv

    def _watch_vm(self) -> None:
        assert self.vm is not None
        code = self.vm.wait()
        with self.lock:
            if self.stopping_vm:
                return
        self.finish(0 if code == 0 else 1)

    def stop_vm(self) -> None:
        if self.vm is not None and self.vm.poll() is None:
            self.stopping_vm = True
            self.vm.terminate()
            try:
                self.vm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.vm.kill()
                self.vm.wait()

    def finish(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self.done.set()

    def cleanup(self) -> None:
        with self.lock:
            self.stopping_vm = True
        self.stop_vm()
        shutil.rmtree(self.private, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.socket.unlink()


def _create_time_rule(config: dict[str, Any]) -> str | None:
    """The two ``VmConfig::validate`` rules of cloud-hypervisor v53 (vmm/src/config.rs) that
    memory.shared touches, written from that source independently of credbridge's copy."""
    memory = config.get("memory", {})
    zones = memory.get("zones") or []
    if memory.get("shared") and memory.get("mergeable"):
        return "InvalidSharedMemoryWithMergeable"
    if any(zone.get("shared") and zone.get("mergeable") for zone in zones):
        return "InvalidSharedMemoryWithMergeable"
    shared = memory.get("shared") or memory.get("hugepages")
    if not shared and memory.get("size") == 0:
        shared = all(zone.get("shared") or zone.get("hugepages") for zone in zones)
    if config.get("fs") and not shared:
        return "VhostUserRequiresSharedMemory"
    return None


def _handler(standin: StandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            # cloud-hypervisor's HTTP server reads each request with recvmsg and keeps the
            # descriptors sent with it (SCM_RIGHTS) as the request's files. Peeking takes a
            # copy of them with the first bytes; the buffered reads that follow drop the
            # kernel's own copy.
            super().setup()
            self.files: list[int] = []
            # (socket.recv_fds would drop MSG_PEEK: it does not pass its flags on.)
            space = socket.CMSG_SPACE(253 * 4)
            with contextlib.suppress(OSError):
                _, ancillary, _, _ = self.request.recvmsg(1, space, socket.MSG_PEEK)
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(data) - len(data) % 4
                        self.files += array.array("i", data[:usable]).tolist()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            files, self.files = self.files, []
            status, answer, info = standin.handle(self.command, self.path, body, files)
            info["status"] = status
            standin.record(info)
            self.send_response(status)
            if answer:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if answer:
                self.wfile.write(answer)
            self.wfile.flush()
            if standin.pending_exit is not None:
                standin.finish(standin.pending_exit)

        do_GET = _serve
        do_PUT = _serve
        do_POST = _serve
        do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # never echo requests (bodies hold secrets)

        def address_string(self) -> str:
            return "unix"

    return Handler


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _process_facts() -> dict[str, Any]:
    """Who runs the stand-in, and whether it dies with its parent (PR_GET_PDEATHSIG)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    value = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pdeathsig": value.value,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ch_standin", allow_abbrev=False)
    parser.add_argument("--standin-spec")
    parser.add_argument("--standin-mode", choices=["boot", "noboot"], default="boot")
    parser.add_argument("--standin-exit", type=int)
    parser.add_argument("--standin-record")
    parser.add_argument("--standin-echo", choices=["create", "boot"])
    parser.add_argument("--standin-capture")
    parser.add_argument("--api-socket", required=True)
    parser.add_argument("-v", action="count", default=0)
    parser.add_argument("--seccomp")
    parser.add_argument("--log-file")
    for flag in (
        "kernel",
        "firmware",
        "initramfs",
        "cmdline",
        "cpus",
        "memory",
        "serial",
        "console",
        "platform",
    ):
        parser.add_argument(f"--{flag}")
    for flag in ("disk", "net", "fs"):
        parser.add_argument(f"--{flag}", action="append")
    options = parser.parse_args(argv)
    api = _split_options(options.api_socket)
    if "path" not in api:
        parser.error("--api-socket needs path=")
    options.api_socket_path = api["path"]
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    spec = load_spec(Path(options.standin_spec)) if options.standin_spec else None
    standin = StandIn(options, spec)
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        # cloud-hypervisor shuts its VMM down cleanly (status 0) on SIGTERM and SIGINT.
        standin.finish(128 + signum if signum == signal.SIGHUP else 0)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    standin.capture(f"standin-{os.getpid()}.json", json.dumps(_process_facts()).encode())
    try:
        # Flags that describe a VM (cloud-hypervisor boots it at once, API or not).
        cli_config = config_from_cli(options)
        if cli_config is not None:
            problems = schema_problems(cli_config, "VmConfig", spec) if spec is not None else []
            oem = cli_config.get("platform", {}).get("oem_strings", [])
            standin.record(
                {
                    "method": "CLI",
                    "path": "argv",
                    "problem": "; ".join(problems),
                    "oem_names": [s.partition("=")[0] for s in oem],
                }
            )
            if problems:
                print("stand-in: invalid VM config on the command line", file=sys.stderr)
                return 1
        with contextlib.suppress(FileNotFoundError):
            standin.socket.unlink()
        server = _Server(str(standin.socket), _handler(standin))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            if cli_config is not None:
                standin.config = cli_config
                standin.state = "Created"
                if standin.boot() is not None:
                    return 1
                standin.state = "Running"
                if standin.pending_exit is not None:
                    standin.finish(standin.pending_exit)
            while not standin.done.wait(0.2):
                pass
            code = standin.exit_code or 0
            facts = {"signals": received, "exit": code}
            standin.capture(f"standin-{os.getpid()}.exit.json", json.dumps(facts).encode())
            return code
        finally:
            server.shutdown()
            server.server_close()
    finally:
        standin.cleanup()


if __name__ == "__main__":
    sys.exit(main())
