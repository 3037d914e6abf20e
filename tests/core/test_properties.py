"""Property-based tests (hypothesis) over everything that parses what users write.

Each target runs twice: ``quick`` in the default suite (the ``suite`` hypothesis profile, a few
hundred examples) and ``fuzz`` with at least 10,000 examples, deselected by default::

    .venv/bin/python -m pytest -m fuzz tests/core/test_properties.py

The terminal summary lists examples and time per target (docs/reliability.md has the figures).
The one property shared by every target: whatever the input, only :class:`CredbridgeError`
subclasses escape -- never a ``ValueError``, ``UnicodeError``, ``RuntimeError`` or ``KeyError``.
"""

from __future__ import annotations

import base64
import math
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, current_canary, record_fuzz_run
from credbridge.backends.oem_strings import PREFIX
from credbridge.core.config import (
    CREDENTIAL_NAME,
    TARGET_NAME,
    Config,
    load_config,
    parse_config,
)
from credbridge.core.engine import Session
from credbridge.core.errors import CredbridgeError, DeliveryError
from credbridge.core.reference import Reference, parse_reference
from credbridge.core.secret import Secret
from credbridge.core.settings import control_problem
from credbridge.core.types import Delivery
from credbridge.core.vm import VmSink
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import unitfile

BUDGETS = [
    pytest.param("suite", id="quick"),
    pytest.param("fuzz", id="fuzz", marks=pytest.mark.fuzz),
]


def explore(name: str, profile: str, strategy: st.SearchStrategy[Any], check: Callable[..., None]):
    """Run ``check`` over ``strategy`` under a hypothesis profile; record count and time."""
    count = 0
    watcher = current_canary()
    if watcher is not None:
        # Each example is checked on its own (values from one example, texts from the same);
        # examples write no files, so sessions need no stray-file scan.
        watcher.bracket_sessions = False
        watcher.reset()

    @settings(
        settings.get_profile(profile),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(strategy)
    def run(example: Any) -> None:
        nonlocal count
        count += 1
        try:
            check(example)
        finally:
            if watcher is not None:
                leaks = watcher.check()
                watcher.reset()
                assert not leaks, leaks  # a value in an error message, a log line, a file

    started = time.monotonic()
    run()
    record_fuzz_run(name, profile, count, time.monotonic() - started)


# Characters that break parsers: controls, separators, quotes, escapes, non-ASCII, surrogates.
NASTY = st.sampled_from(list("\n\r\t\0\x1b\x7f\x85\u2028\u202e%#?&=:;/\\ '\"~.@$*[]{}+,é€\udcff"))
TEXT = st.text(alphabet=st.one_of(st.characters(), NASTY), max_size=40)
WORD = st.text(alphabet=st.one_of(st.sampled_from("abcxyz019-_.@:"), NASTY), max_size=12)


# --------------------------------------------------------------------------- references


def reference_texts() -> st.SearchStrategy[str]:
    scheme = st.one_of(st.sampled_from(["file", "env", "vault", "generate", "x+y.z"]), WORD)
    pieces = st.tuples(
        scheme,
        st.sampled_from([":", ":", ""]),
        TEXT,
        st.one_of(st.just(""), st.builds(lambda q: "?" + q, TEXT)),
        st.one_of(st.just(""), st.builds(lambda s: "#" + s, TEXT)),
    )
    return st.one_of(TEXT, pieces.map("".join))


def check_reference(text: str) -> None:
    try:
        reference = parse_reference(text)
    except CredbridgeError:
        return
    canonical = str(reference)
    again = parse_reference(canonical)  # must parse back...
    assert again == reference  # ...to the same reference
    assert str(again) == canonical  # and the canonical form is a fixed point
    assert control_problem(canonical) is None and canonical.isascii()
    assert control_problem(reference.path) is None


@pytest.mark.parametrize("profile", BUDGETS)
def test_reference_parser(profile: str) -> None:
    explore("reference parser", profile, reference_texts(), check_reference)


@pytest.mark.parametrize("profile", BUDGETS)
def test_reference_round_trip_of_built_references(profile: str) -> None:
    """References built from parts: ``str()`` then ``parse`` gives the parts back."""
    # A path that begins with '//' is URL syntax, which the grammar refuses (test_reference.py).
    path = st.text(min_size=1, max_size=30).filter(
        lambda p: control_problem(p) is None and not p.startswith("//")
    )
    options = st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3).filter(
        lambda o: all(control_problem(k + v) is None for k, v in o.items())
    )
    selector = st.one_of(st.none(), st.text(min_size=1, max_size=20))
    parts = st.tuples(path, options, selector).filter(
        lambda p: p[2] is None or control_problem(p[2]) != "is not valid UTF-8"
    )

    def check(built: tuple[str, dict[str, str], str | None]) -> None:
        from credbridge.core.reference import Locator

        path_text, opts, sel = built
        if sel is not None and sel.startswith("/"):
            sel = "/" + sel[1:].replace("~", "~0")
        reference = Reference(Locator("x", path_text, tuple(sorted(opts.items()))), sel)
        parsed = parse_reference(str(reference))
        assert (parsed.path, parsed.options, parsed.selector) == (path_text, opts, sel)

    explore("reference round trip (built)", profile, parts, check)


# --------------------------------------------------------------------------- names


def exercise(config: Config) -> None:
    """Open everything a config names the way a run would, without touching any file."""
    with Session(config) as session:
        session.validate()
        for target in config.targets.values():
            if target.kind == "unit":
                session.unit_dropin(target.name)
            else:
                session.launcher(target)


@pytest.mark.parametrize("profile", BUDGETS)
def test_credential_and_target_names(profile: str) -> None:
    # A valid-looking word plus one trailing newline is what "$" used to let through.
    name = st.one_of(WORD, TEXT, WORD.map(lambda w: w + "\n"))
    names = st.tuples(name, name)

    def check(pair: tuple[str, str]) -> None:
        target, credential = pair
        data = {
            "sinks": {"credstore": {"directory": "/run/credstore"}},
            "targets": {target: {"credentials": {credential: "generate:hex"}}},
        }
        try:
            config = parse_config(data, directory=Path("/etc/credbridge"))
            exercise(config)
        except CredbridgeError:
            return
        # Accepted: the documented rules hold, and the files stay inside the credstore.
        assert TARGET_NAME.fullmatch(target) and not target.startswith(".")
        assert CREDENTIAL_NAME.fullmatch(credential) and credential not in {".", ".."}
        file = Path("/run/credstore") / target / credential
        assert file.parent.parent == Path("/run/credstore") and file.name == credential

    explore("credential/target names", profile, names, check)


# --------------------------------------------------------------------------- unit drop-in


def directories() -> st.SearchStrategy[str]:
    segment = st.text(alphabet=st.one_of(st.sampled_from("ab %\\.-~"), NASTY), max_size=8)
    built = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
    return st.one_of(built, TEXT)


@pytest.mark.parametrize("profile", BUDGETS)
def test_dropin_parses_back_to_exactly_the_intended_lines(profile: str) -> None:
    """Whatever the config, the drop-in holds exactly one LoadCredential= per credential,
    pointing at the file the credstore sink writes -- or the config is refused in one line."""
    cases = st.tuples(
        directories(),
        st.sampled_from(["app.service", "a@b:c\\x2d.service", "app"]),
        st.lists(st.one_of(WORD, st.sampled_from(["db", "a b", "x.y"])), max_size=4),
        st.booleans(),
        st.booleans(),
    )

    def check(case: tuple[str, str, list[str], bool, bool]) -> None:
        directory, target, names, optional, encrypt = case
        credentials = {n: {"ref": "generate:hex", "optional": optional} for n in names}
        data = {
            "sinks": {"credstore": {"directory": directory, "encrypt": encrypt}},
            "targets": {target: {"credentials": credentials}},
        }
        try:
            config = parse_config(data, directory=Path("/etc/credbridge"))
            with Session(config) as session:
                found, text = session.unit_dropin(target)
                sink = session.sink(found)
        except CredbridgeError:
            return
        directive = "LoadCredentialEncrypted" if encrypt else "LoadCredential"
        expected = []
        for spec in found.credentials:
            expected.append((directive, spec.name, str(sink.directory / spec.name)))  # type: ignore[attr-defined]
        assert unitfile.load_credentials(text) == expected
        for _, _, path in expected:
            assert path.startswith("/") and ".." not in Path(path).parts

    explore("unit drop-in writer", profile, cases, check)


# --------------------------------------------------------------------------- TOML loader

SEEDS = [
    (REPO / "examples" / "credbridge.toml").read_text(),
    (REPO / "examples" / "microvm" / "credbridge.toml").read_text(),
    """
[credbridge]
concurrency = 4
[sources.vault]
address = "https://127.0.0.1:8200"
connect_timeout = 2.5
retries = 2
auth = { method = "approle", role_id = "file:/etc/role", secret_id = "env:SECRET_ID" }
[targets."app.service"]
sink = { type = "credstore", directory = "/run/cs", timeout = 10, owner = "root" }
[targets."app.service".credentials]
db = { ref = "vault:secret/app#password", mode = "0440", group = "app", optional = true }
[targets.vm]
kind = "vm"
sink = { type = "fw-cfg" }
launcher = { type = "qemu", kernel = "k", memory = "512M", cpus = 2, disks = ["d.img"], stop_timeout = 5 }
credentials = { x = "target:app.service/db" }
""",
]
SEED_DATA = [tomllib.loads(seed) for seed in SEEDS]

TOML_VALUES = st.recursive(
    st.one_of(
        TEXT,
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.datetimes(),
        st.sampled_from(["generate:hex", "file:~nobody-cb/x", "/run/cs", "1G", "0400", "tty"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(WORD, TEXT), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, Mapping):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutated(data: Any, path: tuple[Any, ...], value: Any, rename: str | None) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, Mapping):
        copy = dict(data)
        new = _mutated(copy[head], rest, value, rename)
        if rename is not None and not rest:
            del copy[head]
            copy[rename] = new
        else:
            copy[head] = new
        return copy
    copy_list = list(data)
    copy_list[head] = _mutated(copy_list[head], rest, value, rename)
    return copy_list


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    data: Any = draw(st.sampled_from(SEED_DATA))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        rename = draw(st.one_of(st.none(), WORD)) if path else None
        value = draw(TOML_VALUES) if not path or draw(st.booleans()) else _get(data, path)
        data = _mutated(data, path, value, rename)
    return data


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@pytest.mark.parametrize("profile", BUDGETS)
def test_config_loader_on_mutated_configs(profile: str) -> None:
    def check(data: Any) -> None:
        if not isinstance(data, Mapping):
            data = {"targets": data}
        try:
            exercise(parse_config(data, directory=Path("/etc/credbridge")))
        except CredbridgeError:
            return

    explore("TOML config loader (mutated values)", profile, mutated_configs(), check)


@pytest.mark.parametrize("profile", BUDGETS)
def test_config_loader_on_mutated_text(profile: str, tmp_path: Path) -> None:
    """Byte-level edits of valid files through load_config (TOML errors included)."""
    file = tmp_path / "credbridge.toml"
    edits = st.lists(
        st.tuples(st.integers(0, 4000), st.integers(0, 3), st.one_of(NASTY, st.characters())),
        min_size=1,
        max_size=4,
    )

    def check(case: tuple[str, list[tuple[int, int, str]]]) -> None:
        text, changes = case
        for position, cut, char in changes:
            at = position % (len(text) + 1)
            text = text[:at] + char + text[at + cut :]
        file.write_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates: not UTF-8
        try:
            exercise(load_config(file))
        except CredbridgeError:
            return

    explore(
        "TOML config loader (mutated text)",
        profile,
        st.tuples(st.sampled_from(SEEDS), edits),
        check,
    )


# --------------------------------------------------------------------------- deep nesting

# Where a nested value goes in a config: every table a run walks (settings of sources, sinks,
# launchers, a credential's table) and the top level. "@@" is replaced by the nested text.
DEEP_TOML = [
    "x = @@\n",
    "[sources.vault]\naddress = @@\n",
    '[sinks.credstore]\ndirectory = "/run/cs"\nowner = @@\n',
    '[targets."app.service".credentials]\ndb = @@\n',
    '[targets.vm]\nkind = "vm"\nlauncher = { type = "qemu", kernel = "k", disks = @@ }\n'
    'credentials = { x = "generate:hex" }\n',
]
DEEP_JSON = [
    '{"x": @@}',
    '{"sources": {"vault": {"address": @@}}}',
    '{"targets": {"app.service": {"credentials": {"db": @@}}}}',
    '{"targets": {"vm": {"kind": "vm", "launcher": {"type": "qemu", "kernel": "k", '
    '"disks": @@}, "credentials": {"x": "generate:hex"}}}}',
]


def _nested(kind: str, depth: int, leaf: str, toml: bool) -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    opener = "{a = " if toml else '{"a": '
    return opener * depth + leaf + "}" * depth


@st.composite
def deep_configs(draw: st.DrawFn) -> tuple[str, str]:
    toml = draw(st.booleans())
    template = draw(st.sampled_from(DEEP_TOML if toml else DEEP_JSON))
    # Around the limit (100), around the parsers' recursion limit (~1000), and far beyond.
    depth = draw(st.one_of(st.integers(0, 130), st.integers(900, 1100), st.integers(0, 5000)))
    leaf = draw(st.sampled_from(["1", '"generate:hex"', '"/run/cs"', "[]", "{}", '"x"']))
    kind = draw(st.sampled_from(["array", "table"]))
    return ("toml" if toml else "json"), template.replace("@@", _nested(kind, depth, leaf, toml))


@pytest.mark.parametrize("profile", BUDGETS)
def test_config_loader_on_deeply_nested_configs(profile: str, tmp_path: Path) -> None:
    """TOML nested 500 deep and JSON 1000 deep once raised RecursionError: a config of any
    depth, anywhere a run reads one, is loaded or refused with a CredbridgeError."""

    def check(case: tuple[str, str]) -> None:
        suffix, text = case
        file = tmp_path / f"credbridge.{suffix}"
        file.write_text(text)
        try:
            exercise(load_config(file))
        except CredbridgeError:
            return

    explore("config loader (deep nesting, TOML and JSON)", profile, deep_configs(), check)


@pytest.mark.parametrize("profile", BUDGETS)
def test_selectors_on_deeply_nested_values(profile: str) -> None:
    """A ``file:...#selector`` (or any source's JSON) nested to any depth, any selector."""
    from credbridge.core.reference import select

    cases = st.tuples(
        st.sampled_from(["array", "table"]),
        st.one_of(st.integers(0, 130), st.integers(900, 1100), st.integers(0, 5000)),
        st.one_of(st.none(), st.sampled_from(["a", "/a/a", "/0/0", "/a/0/a"]), TEXT),
    )

    def check(case: tuple[str, int, str | None]) -> None:
        kind, depth, selector = case
        value = Secret(_nested(kind, depth, '"leaf"', toml=False).encode())
        try:
            select(value, selector, "file:deep.json")
        except CredbridgeError:
            return

    explore("selectors on deeply nested JSON", profile, cases, check)


# --------------------------------------------------------------------------- OEM strings


def _oem_sink(max_bytes: Any) -> VmSink:
    config = parse_config(
        {
            "targets": {
                "vm": {
                    "kind": "vm",
                    "sink": {"type": "oem-strings", "max_bytes": max_bytes},
                    "launcher": {"type": "qemu", "kernel": "/k"},
                }
            }
        }
    )
    sink = Session(config).sink(config.targets["vm"])
    assert isinstance(sink, VmSink)
    return sink


@pytest.mark.parametrize("profile", BUDGETS)
def test_oem_string_encoding(profile: str, tmp_path: Path) -> None:
    cases = st.tuples(
        st.one_of(st.integers(-10, 70000), st.floats(), st.sampled_from([49152, 1 << 16])),
        st.dictionaries(
            st.one_of(WORD, TEXT, st.sampled_from(["API_KEY", "a=b", "x" * 256])),
            st.binary(max_size=3000),
            max_size=6,
        ),
    )

    def check(case: tuple[Any, dict[str, bytes]]) -> None:
        budget, values = case
        try:
            sink = _oem_sink(budget)
            channel = sink.prepare([Delivery(n, Secret(v)) for n, v in values.items()], tmp_path)
        except CredbridgeError as error:
            assert "\n" not in str(error)
            return
        assert isinstance(budget, int) and 0 < budget <= 65535
        total = 0
        decoded = {}
        for string in channel.oem_strings:
            raw = string.reveal()
            total += len(raw) + 1
            # Names follow systemd's rules (printable ASCII); the value part is pure base64,
            # so no byte of a value can reach a hypervisor's option parser.
            assert raw.isascii() and all(32 <= c < 127 for c in raw)
            assert b"\0" not in raw
            text = raw.decode()
            assert text.startswith(PREFIX)
            name, _, encoded = text[len(PREFIX) :].partition("=")
            assert "," not in encoded and "=" not in encoded.rstrip("=")
            decoded[name] = base64.b64decode(encoded, validate=True)
        assert decoded == values and total <= budget
        assert all(not math.isnan(len(v)) and len(v) > 0 for v in values.values())

    explore("OEM-string encoding", profile, cases, check)


def test_oem_refusals_are_delivery_errors(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError):
        _oem_sink(49152).prepare([Delivery("a=b", Secret(b"x"))], tmp_path)
