"""Launch overhead: ``credbridge launch`` up to cloud-hypervisor's ``vm.boot`` answer.

Both contenders drive the same minimal API responder (below; it answers ``vmm.ping``,
``vm.create`` and ``vm.boot`` on ``--api-socket path=SOCK`` and exits right after ``vm.boot``,
recording the moment it answered). No VM is booted: this measures what credbridge adds.

* credbridge: ``credbridge launch test-vm`` with N ``credential:`` references read from
  ``$CREDENTIALS_DIRECTORY`` (as inside microvm@.service), sink ``oem-strings``.
* hand-made: the shell script operators write today -- start the binary with an API socket,
  poll it with curl, base64 each file of ``$CREDENTIALS_DIRECTORY`` into a JSON body, then
  ``curl -X PUT vm.create`` and ``vm.boot``.

Run:  python bench/bench_launch_ch.py [--runs 15] [--counts 10,100]
Prints a Markdown table: median and p90 from process start to the ``vm.boot`` answer.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import os
import secrets
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CREDBRIDGE = [sys.executable, "-m", "credbridge.core.cli"]

HANDMADE = r"""#!/bin/sh
set -eu
sock="$RUNTIME/api.sock"
"$CH_BINARY" --api-socket "path=$sock" &
ch=$!
until curl -fsS --unix-socket "$sock" http://localhost/api/v1/vmm.ping >/dev/null 2>&1; do
  sleep 0.01
done
strings=""
for f in "$CREDENTIALS_DIRECTORY"/*; do
  n=$(basename "$f")
  strings="$strings${strings:+,}\"io.systemd.credential.binary:$n=$(base64 -w0 <"$f")\""
done
printf '{"payload":{"kernel":"%s"},"memory":{"size":536870912},"platform":{"oem_strings":[%s]}}' \
  "$KERNEL" "$strings" |
  curl -fsS --unix-socket "$sock" -X PUT -H 'Content-Type: application/json' -H 'Expect:' \
    --data-binary @- http://localhost/api/v1/vm.create
curl -fsS --unix-socket "$sock" -X PUT http://localhost/api/v1/vm.boot
wait "$ch"
"""


# --------------------------------------------------------------------------- the responder


def responder(argv: list[str]) -> int:
    """A minimal cloud-hypervisor API responder (not cloud-hypervisor; no validation)."""
    stamp = Path(argv[argv.index("--stamp") + 1])
    sock = argv[argv.index("--api-socket") + 1].removeprefix("path=")
    done = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            ping = self.path.endswith("vmm.ping")
            body = b'{"version":"bench"}' if ping else b""
            self.send_response(200 if ping else 204)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError):
                self.wfile.write(body)
                self.wfile.flush()
            self.close_connection = True
            if os.environ.get("BENCH_TRACE"):
                print("responder:", self.command, self.path, file=sys.stderr)
            if self.path.endswith("vm.boot"):
                stamp.write_text(repr(time.monotonic()))
                done.append(True)

        do_GET = do_PUT = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

    server = socketserver.UnixStreamServer(sock, Handler)
    while not done:
        server.handle_request()
    server.server_close()
    os.unlink(sock)
    return 0


# --------------------------------------------------------------------------- the bench


def setup(root: Path, count: int) -> tuple[Path, Path, Path]:
    creds = root / "credentials"
    creds.mkdir(mode=0o700)
    for index in range(count):
        path = creds / f"secret-{index:03d}"
        path.write_bytes(base64.b64encode(secrets.token_bytes(32)))
        path.chmod(0o400)
    binary = root / "cloud-hypervisor"
    binary.write_text(
        f"#!/bin/sh\nexec {sys.executable} -S {Path(__file__).resolve()} responder "
        f'--stamp {root / "stamp"} "$@"\n'
    )
    binary.chmod(0o755)
    lines = "\n".join(f'secret-{i:03d} = "credential:secret-{i:03d}"' for i in range(count))
    config = root / "credbridge.toml"
    config.write_text(
        f"""[targets.test-vm]
kind = "vm"
sink = "oem-strings"

[targets.test-vm.launcher]
type = "cloud-hypervisor"
binary = "{binary}"
kernel = "/boot/vmlinuz"
runtime_dir = "{root / "run"}"

[targets.test-vm.credentials]
{lines}
"""
    )
    return creds, binary, config


def measure(argv: list[str], env: dict[str, str], stamp: Path) -> float:
    stamp.unlink(missing_ok=True)
    start = time.monotonic()
    errors = stamp.with_name("stderr")
    with open(errors, "wb") as err:
        result = subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=err, check=False, timeout=120
        )
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}): {errors.read_text()}")
    return float(stamp.read_text()) - start


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "responder":
        return responder(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--counts", default="10,100")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed for the hand-made flow")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    print("| credentials | contender | median ms | p90 ms |")
    print("|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        with tempfile.TemporaryDirectory(prefix="cb-bench-ch-", dir=base) as tmp:
            root = Path(tmp)
            creds, binary, config = setup(root, count)
            stamp = root / "stamp"
            # (credbridge gives children an allow-listed environment: the stamp path is
            # in the responder's wrapper, not in a variable.)
            env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds))
            env["CREDBRIDGE_LOAD_PLUGINS"] = ""
            script = root / "handmade.sh"
            script.write_text(HANDMADE)
            (root / "hm").mkdir(mode=0o700)
            hm_env = dict(env, RUNTIME=str(root / "hm"), CH_BINARY=str(binary), KERNEL="/k")
            contenders = {
                "credbridge launch": ([*CREDBRIDGE, "-c", str(config), "launch", "test-vm"], env),
                "hand-made sh+curl": (["/bin/sh", str(script)], hm_env),
            }
            for name, (argv, run_env) in contenders.items():
                measure(argv, run_env, stamp)  # warm-up (page cache, .pyc)
                samples = sorted(measure(argv, run_env, stamp) for _ in range(args.runs))
                p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
                median = statistics.median(samples)
                print(f"| {count} | {name} | {median * 1000:.1f} | {p90 * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
