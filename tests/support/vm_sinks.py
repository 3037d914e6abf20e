"""VM sinks as a config makes them, and deliveries for them: for the tests of each channel
(OEM strings, fw_cfg, virtiofs) and of their limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from credbridge.core.config import parse_config
from credbridge.core.engine import Session
from credbridge.core.secret import Secret
from credbridge.core.types import Delivery
from credbridge.core.vm import VmSink


def vm_sink(sink: str, settings: dict[str, Any] | None = None) -> VmSink:
    """The sink ``sink`` (with ``settings``) of a VM target ``vm`` launched by QEMU."""
    data = {
        "targets": {
            "vm": {
                "kind": "vm",
                "sink": {"type": sink, **(settings or {})},
                "launcher": {"type": "qemu", "kernel": "/boot/vmlinuz"},
            }
        }
    }
    config = parse_config(data, directory=Path("/tmp"))
    result = Session(config).sink(config.target("vm"))
    assert isinstance(result, VmSink)
    return result


def deliveries(**values: bytes) -> list[Delivery]:
    return [Delivery(name, Secret(value)) for name, value in values.items()]
