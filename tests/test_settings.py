"""Declared settings: a misspelt key is an error naming the file and the key, never a default."""

from __future__ import annotations

from pathlib import Path

import pytest
from credbridge.backends.hooks import filestore as filestore_hooks
from credbridge.backends.hooks import generate as generate_hooks
from credbridge.core import ConfigError, load_config, parse_config
from credbridge.launchers.hooks import cloud_hypervisor as ch_hooks
from credbridge.launchers.hooks import qemu as qemu_hooks


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            '[targets."app.service"]\nsink = { type = "credstore", directroy = "/run/x" }\n',
            'targets."app.service".sink.directroy',
            "did you mean 'directory'?",
        ),
        (
            '[sinks.credstore]\ndirectroy = "/run/x"\n[targets."app.service".credentials]\n',
            "sinks.credstore.directroy",
            "did you mean 'directory'?",
        ),
        ('[store]\npth = "/var/lib/x"\n', "store.pth", "did you mean 'path'?"),
        ("[sources.env]\nstrip = true\n", "sources.env.strip", "known: none"),
        ('[sources.vault]\nadress = "http://x"\n', "sources.vault.adress", "'address'"),
        (
            '[targets.vm]\nkind = "vm"\n[targets.vm.launcher]\ntype = "qemu"\n'
            'kernel = "/k"\nmachin = "q35"\n',
            "targets.vm.launcher.machin",
            "did you mean 'machine'?",
        ),
        (
            '[targets.vm]\nkind = "vm"\nsink = { type = "oem-strings", max_byte = 1 }\n'
            '[targets.vm.launcher]\ntype = "qemu"\nkernel = "/k"\n',
            "targets.vm.sink.max_byte",
            "'max_bytes'",
        ),
    ],
)
def test_misspelt_setting_names_file_and_key(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: unknown setting"), message
    assert hint in message


def test_tables_for_unknown_plugins_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.credstorr: unknown sink 'credstorr'"):
        load_config(write(tmp_path, "[sinks.credstorr]\n"))
    with pytest.raises(ConfigError, match=r"sources\.vualt: no plugin provides the source"):
        load_config(write(tmp_path, "[sources.vualt]\n"))


def test_parse_config_checks_plugin_names_like_load_config(tmp_path: Path) -> None:
    data = {"targets": {"a.service": {"sink": "nope"}}}
    with pytest.raises(ConfigError, match="unknown sink 'nope'") as from_code:
        parse_config(data)
    path = write(tmp_path, '[targets."a.service"]\nsink = "nope"\n')
    with pytest.raises(ConfigError, match="unknown sink 'nope'") as from_file:
        load_config(path)
    assert str(from_code.value).partition(": ")[2] == str(from_file.value).partition(": ")[2]
    with pytest.raises(ConfigError, match="unknown store type 'nope'"):
        parse_config({"store": {"type": "nope"}})


def test_valid_settings_pass(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[store]\npath = "state"\n[sinks.credstore]\ndirectory = "/run/x"\n'
            '[targets."a.service"]\nsink = { type = "credstore", allow_persistent = true }\n',
        )
    )
    assert config.sink_settings(config.target("a.service")) == {
        "directory": "/run/x",
        "allow_persistent": True,
    }


def test_registration_modules_declare_what_the_implementations_read() -> None:
    """The registration modules (loaded always) declare what the implementations (loaded on
    use) accept; where an implementation keeps a finer table, this keeps the two in step."""
    from credbridge.backends.generate import KEY_KINDS, KIND_OPTIONS
    from credbridge.launchers import cloud_hypervisor, qemu, runtime, vmspec

    per_kind = [*KIND_OPTIONS.values(), *(kind.options for kind in KEY_KINDS.values())]
    assert frozenset().union(*per_kind) == generate_hooks.GENERATE_OPTIONS
    assert {"path", "seal", "tpm2_pcrs"} == filestore_hooks.SETTINGS
    assert ch_hooks.SETTINGS == vmspec.COMMON_KEYS | cloud_hypervisor.EXTRA_KEYS
    assert qemu_hooks.SETTINGS == vmspec.COMMON_KEYS | qemu.EXTRA_KEYS
    assert runtime.RUNTIME_SETTINGS <= ch_hooks.SETTINGS
