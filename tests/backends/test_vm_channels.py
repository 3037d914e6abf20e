"""The VM sinks (oem-strings, fw-cfg, virtiofs): limits, one-line errors, files and modes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends.fw_cfg import fw_cfg_channel
from credbridge.backends.oem_strings import DEFAULT_MAX_BYTES
from credbridge.core.config import parse_config
from credbridge.core.engine import Session
from credbridge.core.errors import ConfigError, DeliveryError
from credbridge.core.secret import Secret
from credbridge.core.types import Change, Delivery, Pending
from credbridge.core.vm import FW_CFG_PREFIX, VmSink, name_problem
from support.vm_sinks import deliveries, vm_sink


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("db-password", True),
        ("ssh.authorized_keys.root", True),
        ("a b", True),  # systemd allows a space
        (" ~", True),  # the first and the last printable ASCII character
        ("a\x7f", False),  # DEL, the one after it
        ("x" * 255, True),
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("a:b", False),
        ("tab\there", False),
        ("é", False),
        ("x" * 256, False),
    ],
)
def test_systemd_name_rules(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) is ok


# --------------------------------------------------------------------------- oem-strings


def test_oem_strings_are_binary_base64_for_any_bytes(tmpfs_dir: Path) -> None:
    value = bytes(range(256)) + b"\n\xff\x00"
    channel = vm_sink("oem-strings").prepare(deliveries(blob=value, text=b"a\nb"), tmpfs_dir)
    assert channel.names == ["blob", "text"]
    first = channel.oem_strings[0].reveal()
    assert first.startswith(b"io.systemd.credential.binary:blob=")
    assert base64.b64decode(first.split(b"=", 1)[1]) == value
    assert not any(tmpfs_dir.iterdir()), "oem-strings writes nothing itself"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("a=b", "'=' is not allowed"), ("a:b", "':' is not allowed"), ("..", "'.' and '..'")],
)
def test_oem_strings_reject_bad_names(tmpfs_dir: Path, name: str, fragment: str) -> None:
    with pytest.raises(DeliveryError) as error:
        vm_sink("oem-strings").prepare([Delivery(name, Secret(b"v"))], tmpfs_dir)
    text = one_line(error)
    assert repr(name) in text and fragment in text


def test_oem_strings_reject_empty_value(tmpfs_dir: Path) -> None:
    with pytest.raises(DeliveryError) as error:
        vm_sink("oem-strings").prepare(deliveries(ok=b"1", empty=b""), tmpfs_dir)
    assert one_line(error) == "credential 'empty': empty value (nothing to deliver)"


def test_oem_strings_reject_more_than_1_mib(tmpfs_dir: Path) -> None:
    secret = b"S3CR3T" * ((1 << 20) // 6 + 1)
    with pytest.raises(DeliveryError) as error:
        vm_sink("oem-strings", {"max_bytes": 65535}).prepare(deliveries(big=secret), tmpfs_dir)
    text = one_line(error)
    assert "'big'" in text and "1 MiB" in text and "S3CR3T" not in text


def test_oem_strings_reject_256_strings(tmpfs_dir: Path) -> None:
    many = {f"c{i}": b"x" for i in range(256)}
    with pytest.raises(DeliveryError) as error:
        vm_sink("oem-strings").prepare(deliveries(**many), tmpfs_dir)
    text = one_line(error)
    assert "'c255'" in text and "255" in text
    vm_sink("oem-strings").prepare(deliveries(**{f"c{i}": b"x" for i in range(255)}), tmpfs_dir)


def test_oem_strings_budget(tmpfs_dir: Path) -> None:
    sink = vm_sink("oem-strings")
    # 3 strings of 16 KiB of base64 each: the third crosses the 48 KiB default budget.
    chunk = b"\x01" * (12 * 1024)
    sink.prepare(deliveries(a=chunk, b=chunk), tmpfs_dir)
    with pytest.raises(DeliveryError) as error:
        sink.prepare(deliveries(a=chunk, b=chunk, c=chunk), tmpfs_dir)
    text = one_line(error)
    assert "credential 'c'" in text and f"budget of {DEFAULT_MAX_BYTES} bytes" in text


def test_oem_strings_budget_setting_is_checked() -> None:
    with pytest.raises(ConfigError) as error:
        vm_sink("oem-strings", {"max_bytes": 70000})
    assert "targets.vm.sink.max_bytes" in one_line(error)
    with pytest.raises(ConfigError, match="unknown setting 'budget'"):
        vm_sink("oem-strings", {"budget": 1})


def test_oem_strings_plan_lists_names_only() -> None:
    plan = vm_sink("oem-strings").plan(
        {"a": Secret(b"topsecret"), "b": Pending("would be generated")}
    )
    assert [(e.credential, e.change) for e in plan] == [("a", Change.ADD), ("b", Change.ADD)]
    assert "topsecret" not in repr(plan)
    with pytest.raises(DeliveryError, match="'a=b'"):
        vm_sink("oem-strings").plan({"a=b": Pending("x")})


def test_oem_strings_preview_holds_no_values(tmpfs_dir: Path) -> None:
    channel = vm_sink("oem-strings").preview(["a", "b"], tmpfs_dir)
    assert [s.reveal() for s in channel.oem_strings] == [
        b"io.systemd.credential.binary:a=<redacted>",
        b"io.systemd.credential.binary:b=<redacted>",
    ]


# --------------------------------------------------------------------------- fw-cfg


def test_fw_cfg_writes_0400_files(tmpfs_dir: Path) -> None:
    runtime = tmpfs_dir / "rt"
    runtime.mkdir(mode=0o700)
    value = b"\x00\xff\nline\n"
    channel = vm_sink("fw-cfg").prepare(deliveries(**{"db.pass": value}), runtime)
    (item,) = channel.fw_cfg
    assert item.name == FW_CFG_PREFIX + "db.pass"
    assert item.path.read_bytes() == value
    assert stat.S_IMODE(os.lstat(item.path).st_mode) == 0o400
    assert stat.S_IMODE(os.lstat(item.path.parent).st_mode) == 0o700
    assert len(item.name) <= 55


def test_fw_cfg_name_limit(tmpfs_dir: Path) -> None:
    sink = vm_sink("fw-cfg")
    sink.prepare(deliveries(**{"n" * 28: b"v"}), tmpfs_dir / "ok")
    with pytest.raises(DeliveryError) as error:
        sink.prepare(deliveries(**{"n" * 29: b"v"}), tmpfs_dir / "bad")
    assert "longer than 28 characters" in one_line(error)
    assert not (tmpfs_dir / "bad").exists(), "validation happens before any file is written"


def test_fw_cfg_total_limit(tmpfs_dir: Path) -> None:
    half = b"h" * (600 * 1024)
    with pytest.raises(DeliveryError) as error:
        fw_cfg_channel(deliveries(a=half, b=half), tmpfs_dir)
    assert "credential 'b'" in one_line(error)


def test_fw_cfg_takes_no_settings() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'x'"):
        vm_sink("fw-cfg", {"x": 1})


# --------------------------------------------------------------------------- virtiofs


def test_virtiofs_share_directory(tmpfs_dir: Path) -> None:
    runtime = tmpfs_dir / "rt"
    runtime.mkdir(mode=0o700)
    sink = vm_sink("virtiofs", {"tag": "creds"})
    channel = sink.prepare(deliveries(a=b"\x00\xff", b=b"x\ny\n"), runtime)
    (share,) = channel.virtiofs
    assert share.tag == "creds"
    assert share.directory.is_relative_to(runtime)
    assert stat.S_IMODE(os.lstat(share.directory).st_mode) == 0o700
    assert sorted(p.name for p in share.directory.iterdir()) == ["a", "b"]
    for path in share.directory.iterdir():
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o400
    assert (share.directory / "a").read_bytes() == b"\x00\xff"
    assert sink.preview(["a"], runtime).virtiofs == channel.virtiofs


def test_virtiofs_refuses_symlinked_file(tmpfs_dir: Path) -> None:
    runtime = tmpfs_dir / "rt"
    share = runtime / "virtiofs" / "credbridge"
    share.mkdir(parents=True)
    (share / "a").symlink_to(tmpfs_dir / "elsewhere")
    with pytest.raises(FileExistsError):
        vm_sink("virtiofs").prepare(deliveries(a=b"v"), runtime)
    assert not (tmpfs_dir / "elsewhere").exists()


def test_virtiofs_update_replaces_the_set_in_place_generation_last(tmpfs_dir: Path) -> None:
    """What ``credbridge agent`` does to a running VM's share: changed and new files renamed
    in, removed ones deleted, the same ones left as they are, then the generation file."""
    runtime = tmpfs_dir / "rt"
    runtime.mkdir(mode=0o700)
    sink = vm_sink("virtiofs")
    (share,) = sink.prepare(deliveries(a=b"one", b=b"same", c=b"gone"), runtime).virtiofs
    kept_inode = os.stat(share.directory / "b").st_ino
    generation = share.directory / ".credbridge-generation"

    assert sink.update(deliveries(a=b"one", b=b"same", c=b"gone"), runtime) == []
    assert not generation.exists()
    assert sink.update(deliveries(a=b"two", b=b"same", d=b"new"), runtime) == ["a", "c", "d"]
    assert sorted(p.name for p in share.directory.iterdir()) == [
        ".credbridge-generation",
        "a",
        "b",
        "d",
    ]
    assert (share.directory / "a").read_bytes() == b"two"
    assert (share.directory / "d").read_bytes() == b"new"
    assert os.stat(share.directory / "b").st_ino == kept_inode
    assert generation.read_text() == "1\n"
    for path in share.directory.iterdir():
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o400
    assert sink.update(deliveries(a=b"three", b=b"same", d=b"new"), runtime) == ["a"]
    assert generation.read_text() == "2\n"


def test_virtiofs_update_refuses_the_generation_name_and_changes_nothing(
    tmpfs_dir: Path,
) -> None:
    runtime = tmpfs_dir / "rt"
    runtime.mkdir(mode=0o700)
    sink = vm_sink("virtiofs")
    (share,) = sink.prepare(deliveries(a=b"one"), runtime).virtiofs
    with pytest.raises(DeliveryError) as error:
        sink.update(deliveries(a=b"two", **{".credbridge-generation": b"9"}), runtime)
    assert "'.credbridge-generation'" in one_line(error)
    assert [p.name for p in share.directory.iterdir()] == ["a"]
    assert (share.directory / "a").read_bytes() == b"one"


def test_boot_time_channels_cannot_be_updated(tmpfs_dir: Path) -> None:
    for name in ("oem-strings", "fw-cfg"):
        sink = vm_sink(name)
        assert sink.changes_after_boot is False
        with pytest.raises(DeliveryError, match="cannot change after boot"):
            sink.update(deliveries(a=b"v"), tmpfs_dir)
    assert vm_sink("virtiofs").changes_after_boot is True


def test_virtiofs_tag_is_checked() -> None:
    with pytest.raises(ConfigError) as error:
        vm_sink("virtiofs", {"tag": "x" * 37})
    assert "targets.vm.sink.tag" in one_line(error)


def test_vm_sinks_refuse_unit_targets() -> None:
    data = {"targets": {"a.service": {"sink": "oem-strings"}}}
    with pytest.raises(ConfigError, match="cannot serve a unit target"):
        Session(parse_config(data, directory=Path("/tmp"))).validate()


def test_a_vm_sink_must_implement_prepare() -> None:
    """A plugin's VM sink without prepare() fails when made, not at launch."""

    class Incomplete(VmSink):
        def plan(self, credentials: Any) -> list[Any]:
            return []

        def location(self) -> str:
            return "nowhere"

    with pytest.raises(TypeError, match="prepare"):
        Incomplete()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("sink", "where"), [("fw-cfg", "fw_cfg"), ("virtiofs", "virtiofs"), ("oem-strings", "SMBIOS")]
)
def test_vm_sink_plans_list_names_and_check_every_value(sink: str, where: str) -> None:
    """A plan (launch --dry-run) names each credential, says which are still to be generated,
    and checks names and sizes of all of them, also after a value that does not exist yet."""
    plan = vm_sink(sink).plan({"later": Pending("generated on first use"), "db": Secret(b"v")})
    assert [(e.credential, e.change) for e in plan] == [("later", Change.ADD), ("db", Change.ADD)]
    assert plan[0].detail.endswith(" (generated on first use)")
    assert "(" not in plan[1].detail
    assert where in plan[1].detail
    with pytest.raises(DeliveryError, match="'big'"):
        vm_sink(sink).plan({"later": Pending("generated"), "big": Secret(b"b" * ((1 << 20) + 1))})
    with pytest.raises(DeliveryError, match="invalid name"):
        vm_sink(sink).plan({"later": Pending("generated"), "a/b": Secret(b"v")})


@pytest.mark.parametrize(
    ("module", "known"),
    [
        ("fw_cfg", "for sink 'fw-cfg' (known: none)"),
        ("virtiofs", "(known: tag)"),
        ("oem_strings", "(known: "),
    ],
)
def test_plugins_opened_directly_refuse_unknown_settings(module: str, known: str) -> None:
    """The config loader refuses undeclared keys first; a sink opened directly (a plugin's
    own code, credbridge.testing) names the first unknown key itself."""
    import importlib

    from credbridge.core.types import SinkContext

    plugin = importlib.import_module(f"credbridge.backends.{module}")
    launcher = {"type": "qemu", "kernel": "/k"}
    target = {"kind": "vm", "launcher": launcher, "sink": {"type": plugin.SINK_NAME}}
    config = parse_config({"targets": {"vm": target}}, directory=Path("/tmp"))
    opener = plugin.open_sink
    context = SinkContext(config.target("vm"), {"zz": 1, "aa": 2}, config, "targets.vm.sink")
    with pytest.raises(ConfigError) as error:
        opener(context)
    assert "unknown setting 'aa' " in str(error.value)
    assert known in str(error.value)


def test_the_file_store_opened_directly_refuses_unknown_settings() -> None:
    from credbridge.backends.filestore import open_store
    from credbridge.core.types import StoreContext

    with pytest.raises(ConfigError) as error:
        open_store(StoreContext({"zz": 1, "aa": 2}, Path("/tmp")))
    assert "unknown setting 'aa' for store 'file' (known: path, seal, tpm2_pcrs)" in str(
        error.value
    )


def test_channel_items_cannot_be_changed_after_prepare(tmpfs_dir: Path) -> None:
    """A launcher hands these paths to the hypervisor: nothing may repoint them later."""
    from credbridge.core.records import FrozenRecordError

    runtime = tmpfs_dir / "rt"
    runtime.mkdir(mode=0o700)
    (item,) = vm_sink("fw-cfg").prepare(deliveries(a=b"v"), runtime).fw_cfg
    (share,) = vm_sink("virtiofs").prepare(deliveries(b=b"v"), runtime).virtiofs
    for thing, field_name in ((item, "path"), (share, "directory")):
        with pytest.raises(FrozenRecordError):
            setattr(thing, field_name, Path("/elsewhere"))


def test_a_channel_a_launcher_does_not_take_is_refused_by_name(
    tmp_path: Path, credbridge_plugins: Any
) -> None:
    """The channel set is open: a sink may carry a channel core/vm.py does not name (here
    ``vsock``, in ``VmChannel.other``), and a launcher that does not take it says so, naming
    the channel, the sink and itself, at plan time as at launch."""
    from collections.abc import Iterable, Mapping, Sequence

    from credbridge.core import PlanEntry, SinkContext, SinkType, hookimpl
    from credbridge.core.vm import VmChannel

    class VsockSink(VmSink):
        def plan(self, credentials: Mapping[str, Secret | Pending]) -> list[PlanEntry]:
            return [PlanEntry(name, Change.ADD, "vsock") for name in credentials]

        def preview(self, names: Sequence[str], runtime_dir: Path) -> VmChannel:
            return VmChannel(sink="vsock", names=list(names), other={"vsock": ["cid 3"]})

        def prepare(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> VmChannel:
            return self.preview([d.name for d in deliveries], runtime_dir)

    def open_vsock(context: SinkContext) -> VmSink:
        return VsockSink()

    class Plugin:
        @hookimpl
        def credbridge_sinks(self) -> Iterable[SinkType]:
            yield SinkType(name="vsock", open=open_vsock, target_kinds=("vm",))

    credbridge_plugins.register(Plugin(), "vsock-sink")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    targets = {
        name: {
            "kind": "vm",
            "sink": "vsock",
            "launcher": {"type": launcher, "kernel": str(kernel)},
            "credentials": {"KEY": "env:HOME"},
        }
        for name, launcher in (("vm-q", "qemu"), ("vm-c", "cloud-hypervisor"))
    }
    config = parse_config({"targets": targets}, directory=tmp_path)
    with Session(config) as session:
        results = {r.target: r for r in session.check() if not r.credential}
    for name, launcher in (("vm-q", "qemu"), ("vm-c", "cloud-hypervisor")):
        assert not results[name].ok
        assert results[name].detail == (
            f"{name}: sink 'vsock' produced vsock items, which the {launcher} launcher "
            "does not take"
        )
    assert VmChannel(sink="x", other={"vsock": []}).carried() == []
