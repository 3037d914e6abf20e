"""``credbridge agent`` and ``credbridge status`` as a user runs them: a real agent process
against a real OpenBao, its sd_notify messages on a socket the test binds, restarts recorded by
the ``systemctl`` stub of tests/support/systemctl_stub.py, and leases renewed for real (OpenBao child
tokens, through a source installed as a third-party plugin)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import secret_value
from credbridge.core.agent import backoff, renewal_delay
from credbridge.core.config import parse_config
from credbridge.core.errors import ConfigError
from support.openbao import DevServer, openbao
from support.systemctl_stub import outside_a_service, stub, verbs
from support.venvs import install_into, make_distribution, venv_seeing_this_credbridge

__all__ = ["openbao", "outside_a_service", "stub"]  # fixtures imported so pytest finds them


def wait_for(
    what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes] | None = None
) -> Any:
    """Poll ``check`` until it returns something true; fail (naming ``what``) after a minute
    or when the agent died meanwhile. Not a timing assertion: a guard against hanging."""
    deadline = time.monotonic() + 60
    while True:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the agent exited ({proc.returncode}) before {what}: {err.decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class NotifySocket:
    """A datagram socket in the abstract namespace, as systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        self.name = f"@credbridge-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def lines(self) -> list[str]:
        with self._lock:
            return [line for message in self.messages for line in message.splitlines()]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


def put(server: DevServer, path: str, **fields: str) -> None:
    for value in fields.values():
        secret_value(value)
    mount, _, rest = path.partition("/")
    server.client().secrets.kv.v2.create_or_update_secret(
        path=rest, secret=fields, mount_point=mount
    )


def vault_table(server: DevServer, tmp_path: Path) -> str:
    token = tmp_path / "bao-token"
    token.write_text(secret_value(server.token) + "\n")
    return (
        "[sources.vault]\n"
        f'address = "{server.address}"\n'
        "retries = 1\nbackoff = 0.0\n"
        'refresh = "1s"\n'
        f'auth = {{ token_file = "{token}" }}\n'
    )


def write_config(tmp_path: Path, credstore: Path, body: str) -> Path:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        f'[sinks.credstore]\ndirectory = "{credstore}"\n'
        '[agent]\nretry_min = "200ms"\nretry_max = "1s"\n' + body
    )
    return config


def start_agent(
    config: Path,
    stub_dir: Path,
    notify: NotifySocket | None,
    python: str = sys.executable,
    **extra: str,
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(extra)
    env["PATH"] = f"{stub_dir}:{os.environ['PATH']}"
    env.pop("INVOCATION_ID", None)
    if python != sys.executable:
        env.pop("CREDBRIDGE_LOAD_PLUGINS", None)  # the plugin venv's own plugin is wanted
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.name
    return subprocess.Popen(
        [python, "-m", "credbridge.core.cli", "-v", "-c", str(config), "agent"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def status(config: Path, python: str = sys.executable) -> dict[str, Any]:
    env = dict(os.environ)
    if python != sys.executable:
        env.pop("CREDBRIDGE_LOAD_PLUGINS", None)
    result = subprocess.run(
        [python, "-m", "credbridge.core.cli", "-c", str(config), "status", "--json"],
        capture_output=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr.decode()
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# --------------------------------------------------------------------------- the loop


def test_agent_delivers_changes_only_restarts_their_unit_and_speaks_sd_notify(
    openbao: DevServer, tmp_path: Path, tmpfs_dir: Path, stub: Path, notify_socket: NotifySocket
) -> None:
    base = f"agent-{uuid.uuid4().hex[:8]}"
    put(openbao, f"secret/{base}/app", password="app-one")
    put(openbao, f"secret/{base}/worker", password="worker-one")
    body = vault_table(openbao, tmp_path) + (
        f'[targets."app.service"]\non_change = "restart"\n'
        f'[targets."app.service".credentials]\ntoken = "vault:secret/{base}/app#password"\n'
        f'[targets."worker.service"]\non_change = "restart"\n'
        f'[targets."worker.service".credentials]\n'
        f'other = "vault:secret/{base}/worker#password"\n'
    )
    config = write_config(tmp_path, tmpfs_dir, body)
    app, worker = tmpfs_dir / "app.service" / "token", tmpfs_dir / "worker.service" / "other"
    # The watchdog is meant for the agent when WATCHDOG_PID is unset.
    with running(start_agent(config, stub, notify_socket, WATCHDOG_USEC="2000000")) as proc:
        wait_for("READY=1", lambda: "READY=1" in notify_socket.lines(), proc)
        wait_for("WATCHDOG=1", lambda: "WATCHDOG=1" in notify_socket.lines(), proc)
        assert read(app) == "app-one"
        assert read(worker) == "worker-one"
        assert any(line.startswith("STATUS=") for line in notify_socket.lines())
        # Both sets were new: each unit restarted once.
        assert sorted(verbs(stub)) == [
            ("try-restart", "app.service"),
            ("try-restart", "worker.service"),
        ]
        (stub / "calls.jsonl").unlink()
        worker_inode = os.stat(worker).st_ino
        worker_dir_inode = os.stat(worker.parent).st_ino

        put(openbao, f"secret/{base}/app", password="app-two")
        wait_for("the new value in the credstore", lambda: read(app) == "app-two", proc)
        wait_for("the restart", lambda: verbs(stub), proc)
        assert verbs(stub) == [("try-restart", "app.service")]
        # The unchanged target was not written again (the credstore swaps a new directory in
        # for every set it writes).
        assert os.stat(worker).st_ino == worker_inode
        assert os.stat(worker.parent).st_ino == worker_dir_inode

        state = wait_for(
            "a state showing the new delivery",
            lambda: (
                (s := status(config))["targets"]["app.service"]["credentials"]["token"][
                    "delivered_at"
                ]
                and s
            ),
            proc,
        )
        token = state["targets"]["app.service"]["credentials"]["token"]
        assert token["reference"] == f"vault:secret/{base}/app#password"
        assert token["next_refresh"] is not None
        assert token["last_error"] is None
        assert state["ready"] is True and state["running"] is True
        assert state["targets"]["worker.service"]["status"] == "ok"
        text = (tmp_path / "store" / ".credbridge-agent" / "state.json").read_text()
        assert "app-two" not in text and "worker-one" not in text
        assert (
            tmp_path / "store" / ".credbridge-agent" / "state.json"
        ).stat().st_mode & 0o777 == 0o600

        human = subprocess.run(
            [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "status"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        assert f"app.service/token\tvault:secret/{base}/app#password" in human
        assert "app-two" not in human

        # SIGHUP: the config is read again and a new credential delivered.
        put(openbao, f"secret/{base}/extra", password="extra-one")
        config.write_text(config.read_text() + f'extra = "vault:secret/{base}/extra#password"\n')
        proc.send_signal(signal.SIGHUP)
        extra = tmpfs_dir / "worker.service" / "extra"
        wait_for("the credential added by SIGHUP", lambda: read(extra) == "extra-one", proc)
        wait_for("RELOADING=1", lambda: "RELOADING=1" in notify_socket.lines(), proc)

        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert "STOPPING=1" in notify_socket.lines()
    assert read(app) == "app-two"
    assert "app-two" not in err.decode() and "app-one" not in err.decode()
    assert status(config)["running"] is False


def test_backend_down_keeps_the_last_values_says_so_and_recovers(
    tmp_path: Path, tmpfs_dir: Path, stub: Path
) -> None:
    server = DevServer().start()
    try:
        put(server, "secret/app", password="first-value")
        body = vault_table(server, tmp_path) + (
            '[targets."app.service".credentials]\ntoken = "vault:secret/app#password"\n'
        )
        config = write_config(tmp_path, tmpfs_dir, body)
        app = tmpfs_dir / "app.service" / "token"
        with running(start_agent(config, stub, None)) as proc:
            wait_for("the first delivery", lambda: read(app) == "first-value", proc)
            port = server.port
            server.kill()

            def failing() -> dict[str, Any] | None:
                target = status(config)["targets"]["app.service"]
                return target if target["last_error"] else None

            target = wait_for("the outage in the status", failing, proc)
            assert target["status"] == "retrying"
            assert "unreachable" in target["credentials"]["token"]["last_error"]
            assert read(app) == "first-value"  # the last good value stays

            server.start(port=port)  # a dev server starts empty: write the secret again
            put(server, "secret/app", password="second-value")
            wait_for("recovery", lambda: read(app) == "second-value", proc)
            wait_for(
                "a clean status",
                lambda: status(config)["targets"]["app.service"]["last_error"] is None,
                proc,
            )
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        assert "keeping the last good values" in err.decode()
        assert "first-value" not in err.decode() and "second-value" not in err.decode()
    finally:
        server.stop()


# --------------------------------------------------------------------------- leases

CHILD_TOKENS = '''
import time

import hvac
import requests
from credbridge.core import (
    Lease, LeasedSource, Secret, SourceType, Unreachable, hookimpl,
)

TTL = 4


class ChildTokens(LeasedSource):
    """Each value is a new OpenBao child token (renewable, 4 s); its accessor is the lease."""

    def __init__(self, context):
        self.address = context.settings["address"]
        with open(context.settings["token_file"]) as handle:
            self.parent = handle.read().strip()

    def client(self):
        return hvac.Client(url=self.address, token=self.parent)

    def fetch(self, requests_, mode):
        out = {}
        for request in requests_:
            try:
                auth = self.client().auth.token.create(ttl=f"{TTL}s", renewable=True)["auth"]
            except requests.RequestException:
                out[request] = Unreachable(str(request.reference), "OpenBao is unreachable")
                continue
            now = time.time()
            out[request] = Secret(
                auth["client_token"].encode(),
                lease=Lease(
                    lease_id=auth["accessor"],
                    issued_at=now,
                    expires_at=now + auth["lease_duration"],
                    renewable=auth["renewable"],
                ),
            )
        return out

    def renew(self, request, lease, increment=None):
        try:
            auth = self.client().auth.token.renew_accessor(lease.lease_id, increment=f"{TTL}s")
        except requests.RequestException:
            raise Unreachable(str(request.reference), "OpenBao is unreachable") from None
        auth = auth["auth"]
        return Lease(
            lease_id=lease.lease_id,
            issued_at=lease.issued_at,
            expires_at=time.time() + auth["lease_duration"],
            renewable=auth["renewable"],
        )

    def revoke(self, request, lease):
        self.client().auth.token.revoke_accessor(lease.lease_id)


@hookimpl
def credbridge_sources():
    yield SourceType(
        scheme="childtoken",
        open=ChildTokens,
        selectors=False,
        settings=("address", "token_file"),
    )
'''


@pytest.fixture(scope="module")
def child_token_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv seeing this credbridge, with the child-token source installed as a plugin."""
    root = tmp_path_factory.mktemp("agent-plugin")
    venv = venv_seeing_this_credbridge(root / "venv")
    dist = make_distribution(root, "credbridge-childtoken", "credbridge_childtoken", CHILD_TOKENS)
    install_into(venv, dist)
    return venv


def test_leases_are_renewed_before_they_expire_and_the_value_stays(
    openbao: DevServer, child_token_venv: Path, tmp_path: Path, tmpfs_dir: Path, stub: Path
) -> None:
    token_file = tmp_path / "parent-token"
    token_file.write_text(secret_value(openbao.token) + "\n")
    static = tmp_path / "static"
    static.write_text(secret_value("static-one"))
    body = (
        f'[sources.childtoken]\naddress = "{openbao.address}"\ntoken_file = "{token_file}"\n'
        '[sources.file]\nrefresh = "1s"\n'
        '[targets."app.service".credentials]\ntoken = "childtoken:app"\n'
        f'static = "file:{static}"\n'
        # Two more leases, due with the first: renewed concurrently, each kept alive.
        '[targets."worker.service".credentials]\none = "childtoken:one"\ntwo = "childtoken:two"\n'
    )
    config = write_config(tmp_path, tmpfs_dir, body)
    python = str(child_token_venv / "bin" / "python")
    delivered = tmpfs_dir / "app.service" / "token"
    root = openbao.client()
    with running(start_agent(config, stub, None, python=python)) as proc:
        token = secret_value(wait_for("the child token", lambda: read(delivered), proc))
        first = root.auth.token.lookup(token)["data"]
        assert first["ttl"] <= 4
        # The static value beside it changes: the target is delivered again with the token
        # it holds, not with a new one (a dynamic secret is not issued anew for that).
        static.write_text(secret_value("static-two"))
        beside = tmpfs_dir / "app.service" / "static"
        wait_for("the changed static value", lambda: read(beside) == "static-two", proc)
        kept = read(delivered) == token  # compared apart: a failed assert must not print it
        assert kept, "the token was issued anew"

        first_seen = time.time()

        def renewed_past_its_first_ttl() -> dict[str, Any] | None:
            # A lookup of an expired token fails: alive 1.5 TTLs after it was delivered, with
            # a renewal recorded, only renewals explain it.
            data: dict[str, Any] = root.auth.token.lookup(token)["data"]
            alive = time.time() - first_seen > 6
            return data if alive and data.get("last_renewal_time") else None

        data = wait_for("renewals keeping the token alive", renewed_past_its_first_ttl, proc)
        for name in ("one", "two"):
            other = secret_value(read(tmpfs_dir / "worker.service" / name) or "")
            assert root.auth.token.lookup(other)["data"]["last_renewal_time"]
        assert data["accessor"] == first["accessor"]
        kept = read(delivered) == token
        assert kept, "renewed in place: the value must not be replaced"
        state = status(config, python)["targets"]["app.service"]["credentials"]["token"]
        assert state["lease_id"] == first["accessor"]
        assert state["renewable"] is True
        assert state["next_action"] == "renew"
        assert state["expires_at"] is not None
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    assert "lease renewed until" in err.decode()
    assert token not in err.decode()


def test_a_lease_that_expires_while_the_backend_is_down_is_reported_then_replaced(
    child_token_venv: Path, tmp_path: Path, tmpfs_dir: Path, stub: Path
) -> None:
    server = DevServer().start()
    try:
        token_file = tmp_path / "parent-token"
        token_file.write_text(secret_value(server.token) + "\n")
        body = (
            f'[sources.childtoken]\naddress = "{server.address}"\ntoken_file = "{token_file}"\n'
            '[targets."app.service"]\non_change = "restart"\n'
            '[targets."app.service".credentials]\ntoken = "childtoken:app"\n'
        )
        config = write_config(tmp_path, tmpfs_dir, body)
        python = str(child_token_venv / "bin" / "python")
        delivered = tmpfs_dir / "app.service" / "token"
        with running(start_agent(config, stub, None, python=python)) as proc:
            token = secret_value(wait_for("the child token", lambda: read(delivered), proc))
            wait_for("the first restart", lambda: verbs(stub), proc)
            (stub / "calls.jsonl").unlink()
            port = server.port
            server.kill()

            def expired() -> dict[str, Any] | None:
                target: dict[str, Any] = status(config, python)["targets"]["app.service"]
                return target if target["status"] == "expired" else None

            target = wait_for("the expiry in the status", expired, proc)
            kept = read(delivered) == token
            assert kept, "the policy: the expired value stays in place"
            assert "unreachable" in target["credentials"]["token"]["last_error"]

            server.start(port=port)  # empty again: the root token id is the same
            fresh = secret_value(
                wait_for("a new token", lambda: (v := read(delivered)) != token and v, proc)
            )
            assert server.client().auth.token.lookup(fresh)["data"]["renewable"] is True
            wait_for("the restart onto it", lambda: verbs(stub), proc)
            assert verbs(stub) == [("try-restart", "app.service")]
            wait_for(
                "a clean status",
                lambda: status(config, python)["targets"]["app.service"]["status"] == "ok",
                proc,
            )
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        assert "the delivered value EXPIRED at" in err.decode()
        assert token not in err.decode() and fresh not in err.decode()
    finally:
        server.stop()


# --------------------------------------------------------------------------- pieces


def test_renewal_comes_at_vault_agents_point_of_the_lease() -> None:
    """With renew_at = 2/3 the renewal falls after 70-73.3 % of a fresh lease, as Vault's and
    OpenBao's lifetime watcher computes it (grace 10-20 %, sleep 2/3 remaining + grace/3)."""
    rng = random.Random(7)
    delays = [renewal_delay(100.0, 100.0, 2 / 3, rng) for _ in range(1000)]
    assert min(delays) >= 70.0
    assert max(delays) <= 73.34
    assert max(delays) - min(delays) > 2  # jittered, not one fixed point


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(3)
    assert 0.75 <= backoff(1, 1.0, 300.0, rng) <= 1.0
    assert 6.0 <= backoff(4, 1.0, 300.0, rng) <= 8.0
    assert 225.0 <= backoff(40, 1.0, 300.0, rng) <= 300.0
    assert len({backoff(5, 1.0, 300.0, rng) for _ in range(20)}) > 1


def test_refresh_is_taken_out_of_the_source_settings_and_checked(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "sources": {"file": {"refresh": "1m30s"}},
        "targets": {
            "app": {"credentials": {"a": {"ref": "file:x", "refresh": "10s"}, "b": "file:y"}}
        },
    }
    config = parse_config(base, directory=tmp_path)
    assert config.refresh == {"file": 90.0}
    assert config.sources["file"] == {}
    assert config.targets["app"].credential("a").refresh == 10.0  # type: ignore[union-attr]
    assert config.targets["app"].credential("b").refresh is None  # type: ignore[union-attr]
    base["sources"]["file"]["refresh"] = "soon"
    with pytest.raises(ConfigError, match=r"sources\.file\.refresh: must be a duration"):
        parse_config(base, directory=tmp_path)
    base["sources"]["file"]["refresh"] = "1s"
    base["targets"]["app"]["credentials"]["a"]["refresh"] = 5
    with pytest.raises(ConfigError, match=r"credentials\.a\.refresh: must be a duration"):
        parse_config(base, directory=tmp_path)


def test_status_without_an_agent_is_one_line_and_exit_5(tmp_path: Path, cli: Any) -> None:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        '[targets."app.service".credentials]\nx = "env:HOME"\n'
    )
    result = cli("-c", str(config), "status")
    assert result.returncode == 5
    lines = result.stderr.decode().splitlines()
    assert lines == [
        f"credbridge: error: {tmp_path / 'store' / '.credbridge-agent' / 'state.json'}: "
        "no agent state here: is 'credbridge agent' running?"
    ]


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ('[agent]\nrenew_every = "1s"\n', "agent.renew_every: unknown setting (expected one of:"),
        ("[agent]\nrenew_at = 0.95\n", "agent.renew_at: must be a number from 0.1 to 0.9"),
        ('[agent]\nretry_min = "1m"\nretry_max = "1s"\n', "agent.retry_max: must not be shorter"),
        ('[sources.env]\nrefresh = "-1s"\n', 'sources.env.refresh: must be a duration like "30s"'),
    ],
    ids=["unknown", "renew_at", "retry", "refresh"],
)
def test_a_bad_agent_setting_is_one_line_and_exit_3(
    tmp_path: Path, cli: Any, table: str, line: str
) -> None:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        + table
        + '[targets."app.service".credentials]\nx = "env:HOME"\n'
    )
    result = cli("-c", str(config), "agent")
    assert result.returncode == 3, result.stderr.decode()
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and line in lines[0], lines


def test_an_idle_agent_sleeps_in_one_call_until_its_next_deadline(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, notify_socket: NotifySocket
) -> None:
    """No polling: traced while idle, the agent makes no system call at all -- it sits in one
    select() whose timeout is the time to its next refresh (an hour here)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    (tmp_path / "value").write_text(secret_value("idle-value"))
    body = (
        '[sources.file]\nrefresh = "1h"\n'
        f'[targets."app.service".credentials]\nx = "file:{tmp_path / "value"}"\n'
    )
    config = write_config(tmp_path, tmpfs_dir, body)
    trace = tmp_path / "trace"
    with running(start_agent(config, stub, notify_socket)) as proc:
        wait_for("READY=1", lambda: "READY=1" in notify_socket.lines(), proc)
        wait_for("the state file", lambda: status(config)["ready"], proc)
        tracer = subprocess.Popen(
            ["strace", "-f", "-tt", "-o", str(trace), "-p", str(proc.pid)],
            stderr=subprocess.DEVNULL,
        )
        wait_for("strace to attach", lambda: trace.exists() and trace.read_text(), proc)
        time.sleep(2)  # an observation window, not a timing assertion
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    calls = [line for line in trace.read_text().splitlines() if line.strip()]
    assert len(calls) == 1, calls
    assert "pselect6(" in calls[0] and "tv_sec=35" in calls[0], calls


# --------------------------------------------------------------------------- VMs


def launch_vm(config: Path, name: str) -> subprocess.Popen[bytes]:
    """``credbridge launch NAME`` as the VM's unit runs it (the stand-in stays up)."""
    return subprocess.Popen(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "launch", name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "CREDBRIDGE_LOAD_PLUGINS": ""},
    )


def replace_file(path: Path, text: str) -> None:
    """A new value at a ``file:`` source, as an editor or a rotation writes it."""
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    temp.replace(path)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    return err.decode()


def test_a_running_vms_virtiofs_share_is_updated_in_place_and_the_vm_not_restarted(
    tmpfs_dir: Path, stub: Path, notify_socket: NotifySocket
) -> None:
    """A VM launched by ``credbridge launch`` (cloud-hypervisor stand-in, the real virtiofsd
    serving the share) takes one value directly and one through a ``target:`` link: when
    either changes at its source, the agent writes it into the running VM's share -- a new
    file renamed over the old one, the generation file last -- and restarts no VM, although
    ``on_change`` says restart (it does restart the unit target that changed)."""
    from support.ch_harness import write_config as vm_config
    from support.ch_harness import write_standin

    runtime = tmpfs_dir / "run"
    launcher = {
        "kernel": "/var/lib/microvms/test-vm/vmlinux",  # never read: nothing boots
        "binary": str(write_standin(tmpfs_dir)),
        "runtime_dir": str(runtime),
    }
    key_one, key_two = secret_value("vm-api-key-one-5ab1"), secret_value("vm-api-key-two-77c0")
    shared_one, shared_two = secret_value("shared-one-0c9e1f"), secret_value("shared-two-d41a2b")
    config = vm_config(tmpfs_dir, launcher, {"api-key": key_one.encode()}, sink="virtiofs")
    (tmpfs_dir / "values").mkdir()
    (tmpfs_dir / "values" / "key").write_text(shared_one)
    credstore = tmpfs_dir / "credstore"
    config.write_text(
        config.read_text()
        + 'shared = "target:app.service/key"\n'
        + f'[sinks.credstore]\ndirectory = "{credstore}"\n'
        + '[sources.file]\nrefresh = "1s"\n'
        + '[defaults]\non_change = "restart"\n'
        + '[agent]\nretry_min = "200ms"\nretry_max = "1s"\n'
        + '[targets."app.service".credentials]\nkey = "file:values/key"\n'
    )
    share = runtime / "virtiofs" / "credbridge"
    generation = share / ".credbridge-generation"
    with running(launch_vm(config, "test-vm")) as vm:
        wait_for("the VM's share", lambda: read(share / "shared"), vm)
        assert read(share / "api-key") == key_one
        with running(start_agent(config, stub, notify_socket)) as proc:
            wait_for("READY=1", lambda: "READY=1" in notify_socket.lines(), proc)
            state = wait_for("the VM in the state", lambda: status(config)["targets"], proc)
            assert state["test-vm"]["kind"] == "vm" and state["test-vm"]["channel"] == "live"
            # Same values as the launch wrote: nothing was rewritten.
            assert not generation.exists()

            with (share / "api-key").open() as reader:
                replace_file(tmpfs_dir / "secrets" / "api-key", key_two)
                wait_for("the new file", lambda: read(share / "api-key") == key_two, proc)
                # Renamed over, not written into: an open reader keeps the whole old value.
                assert reader.read() == key_one
            assert wait_for("generation 1", lambda: read(generation) == "1\n", proc)

            replace_file(tmpfs_dir / "values" / "key", shared_two)
            wait_for("the linked value", lambda: read(share / "shared") == shared_two, proc)
            wait_for("generation 2", lambda: read(generation) == "2\n", proc)
            wait_for("the unit restarts", lambda: len(verbs(stub)) >= 2, proc)
            assert verbs(stub) == [("try-restart", "app.service")] * 2
            assert read(credstore / "app.service" / "key") == shared_two
            assert stat_mode(share / "api-key") == 0o400
            creds = status(config)["targets"]["test-vm"]["credentials"]
            assert creds["api-key"]["delivered_at"] and creds["shared"]["delivered_at"]
            err = stop(proc)
        assert proc.returncode == 0, err
        assert "share of the running VM" in err
        for value in (key_one, key_two, shared_one, shared_two):
            assert value not in err
        assert vm.poll() is None  # the VM ran on throughout
        stop(vm)


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_a_vm_on_a_boot_time_channel_is_restarted_by_on_change_or_reported_stale(
    tmpfs_dir: Path, stub: Path, notify_socket: NotifySocket
) -> None:
    """SMBIOS OEM strings cannot change once the VM booted. A changed value restarts the VM's
    unit when its ``on_change`` says so (``vm-r``: through the restart machinery); otherwise
    (``vm-s``: ``none``) the agent says, in its status and its log, that the running VM has
    stale values -- naming the value, never showing it -- until the VM is launched again."""
    from support.ch_harness import toml_value, write_standin

    binary = str(write_standin(tmpfs_dir))
    (tmpfs_dir / "values").mkdir()
    one, two = secret_value("boot-value-one-81f2"), secret_value("boot-value-two-3c4d")
    (tmpfs_dir / "values" / "key").write_text(one)
    body = [
        f'[store]\npath = "{tmpfs_dir / "store"}"',
        f'[sinks.credstore]\ndirectory = "{tmpfs_dir / "credstore"}"',
        '[sources.file]\nrefresh = "1s"',
        '[agent]\nretry_min = "200ms"\nretry_max = "1s"',
        '[targets."app.service"]\non_change = "restart"',
        '[targets."app.service".credentials]\nkey = "file:values/key"',
    ]
    for name, on_change in (("vm-r", "restart"), ("vm-s", "none")):
        launcher = {
            "type": "cloud-hypervisor",
            "kernel": "/var/lib/microvms/test-vm/vmlinux",
            "binary": binary,
            "runtime_dir": str(tmpfs_dir / f"run-{name}"),
        }
        body += [
            f'[targets.{name}]\nkind = "vm"\nsink = "oem-strings"\non_change = "{on_change}"',
            f"[targets.{name}.launcher]",
            *(f"{k} = {toml_value(v)}" for k, v in launcher.items()),
            f'[targets.{name}.credentials]\nkey = "target:app.service/key"',
        ]
    config = tmpfs_dir / "credbridge.toml"
    config.write_text("\n".join(body) + "\n")
    with running(start_agent(config, stub, notify_socket)) as proc:
        wait_for("READY=1", lambda: "READY=1" in notify_socket.lines(), proc)
        (stub / "calls.jsonl").unlink()
        with running(launch_vm(config, "vm-r")) as vm_r, running(launch_vm(config, "vm-s")) as vm_s:
            for name, vm in (("vm-r", vm_r), ("vm-s", vm_s)):
                lock = tmpfs_dir / f"run-{name}" / ".credbridge.lock"
                wait_for(f"{name} running", lambda lock=lock: read(lock), vm)
            replace_file(tmpfs_dir / "values" / "key", two)
            stale = wait_for(
                "vm-s reported stale",
                lambda: (s := status(config)["targets"])["vm-s"]["status"] == "stale" and s,
                proc,
            )
            assert stale["vm-s"]["stale"] == ["app.service/key"]
            assert stale["vm-s"]["channel"] == "boot"
            assert stale["vm-r"]["status"] == "ok" and stale["vm-r"]["stale"] == []
            assert sorted(verbs(stub)) == [
                ("try-restart", "app.service"),
                ("try-restart", "microvm@vm-r.service"),
            ]
            wait_for(
                "STATUS naming the stale VM",
                lambda: any("stale values: vm-s" in line for line in notify_socket.lines()),
                proc,
            )
            # Launched again, the VM has read the new value: no longer stale.
            stop(vm_s)
            with running(launch_vm(config, "vm-s")) as again:
                wait_for(
                    "vm-s fresh after its new launch",
                    lambda: status(config)["targets"]["vm-s"]["status"] == "ok",
                    again,
                )
                stop(again)
            stop(vm_r)
        err = stop(proc)
    assert proc.returncode == 0, err
    assert "vm-s: the running VM has stale values of app.service/key" in err
    assert one not in err and two not in err
