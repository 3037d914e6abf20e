"""``target:T/C`` links: several targets holding the value of one credential.

A credential whose reference is ``target:T/C`` gets what credential ``C`` of target ``T``
gets: ``C``'s own reference, resolved once, and owned by ``T/C`` (so a ``generate:`` value is
the same for both). Chains are followed to their end; a link must name a credential of the
config and must not loop. This module is the one place that follows links: validation
(:func:`check_links`), resolution (:func:`follow`), which units to restart and which targets
a rotation touches (:func:`owner`, :func:`affected_by`), and the warning about linked targets
a delivery leaves out (:func:`left_behind`) all ask it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from credbridge.core.errors import BadReference, ConfigError
from credbridge.core.interfaces import Change, Request
from credbridge.core.reference import Reference

if TYPE_CHECKING:
    from credbridge.core.config import Config, CredentialSpec, Target

SCHEME = "target"


def is_link(reference: Reference) -> bool:
    return reference.scheme == SCHEME


def _linked(config: Config, reference: Reference) -> tuple[str, CredentialSpec | None]:
    """The credential one link names (``T/C``), or ``None`` if the config has no such one."""
    t_name, _, c_name = reference.path.rpartition("/")
    other = config.targets.get(t_name)
    return f"{t_name}/{c_name}", other.credential(c_name) if other else None


def follow(config: Config, target: Target, spec: CredentialSpec) -> Request:
    """What ``spec`` of ``target`` resolves: the reference its links end at, and the
    credential that owns the value (``T/C`` of the last link; itself when it is no link).

    Raises :class:`ConfigError` naming ``spec`` for a link to no credential, or a loop.
    """
    owner, reference = f"{target.name}/{spec.name}", spec.reference
    seen = [owner]
    while is_link(reference):
        key, linked = _linked(config, reference)
        if linked is None:
            raise ConfigError(
                f"{reference} names no credential of this config",
                file=config.label,
                key=spec.where,
            )
        if key in seen:
            raise ConfigError(
                f"target references loop: {' -> '.join([*seen, key])}",
                file=config.label,
                key=spec.where,
            )
        seen.append(key)
        owner, reference = key, linked.reference
    return Request(reference, owner)


def follow_reference(config: Config, reference: Reference) -> Request:
    """:func:`follow` for a ``target:T/C`` reference given on its own (``credbridge get``)."""
    t_name, _, c_name = reference.path.rpartition("/")
    target = config.target(t_name)
    spec = target.credential(c_name)
    if spec is None:
        raise BadReference(str(reference), "names no credential of this config")
    return follow(config, target, spec)


def check_links(config: Config) -> None:
    """Every link names a credential of the config, and none loops."""
    for target in config.targets.values():
        for spec in target.credentials:
            follow(config, target, spec)


def linked_reference(config: Config, reference: Reference) -> Reference:
    """The reference a chain of links starting at ``reference`` ends at; where a link names
    no credential or loops, that link itself (its errors are :func:`follow`'s to report)."""
    seen: set[str] = set()
    while is_link(reference):
        key, linked = _linked(config, reference)
        if linked is None or key in seen:
            return reference
        seen.add(key)
        reference = linked.reference
    return reference


def owner(config: Config, target: Target, spec: CredentialSpec) -> str:
    """The credential (``T/C``) whose value ``spec`` of ``target`` holds."""
    return follow(config, target, spec).owner or f"{target.name}/{spec.name}"


def affected_by(
    config: Config, target_name: str, credential: str
) -> tuple[list[str], list[Target]]:
    """Targets holding the value of ``target_name/credential`` (``target:`` links and
    ``credential:`` inputs of a VM's unit followed): unit targets to deliver, VM targets
    that read it at launch."""
    target = config.target(target_name)
    spec = target.credential(credential)
    if spec is None:
        raise ConfigError(
            f"target {target_name!r} has no credential {credential!r}",
            file=config.label,
            key=target.where,
        )
    value = owner(config, target, spec)
    units: list[str] = []
    names_in_unit: set[tuple[str | None, str]] = set()
    for other in config.targets.values():
        if other.kind != "unit":
            continue
        for other_spec in other.credentials:
            if owner(config, other, other_spec) == value:
                if other.name not in units:
                    units.append(other.name)
                names_in_unit.add((other.unit, other_spec.name))
    vms = []
    for other in config.targets.values():
        if other.kind != "vm":
            continue
        for other_spec in other.credentials:
            reference = other_spec.reference
            inside = (
                reference.scheme == "credential" and (other.unit, reference.path) in names_in_unit
            )
            if inside or owner(config, other, other_spec) == value:
                vms.append(other)
                break
    return units, vms


def left_behind(
    config: Config, delivered: Sequence[Target], changes: Iterable[tuple[str, str, Change]]
) -> list[str]:
    """Warnings for unit targets left out of this delivery that share, through links, a
    value this delivery changed (``changes``: its (target, credential, change) results).

    Only what is delivered is looked at: the sinks of the targets left out are neither
    opened nor planned (this run holds none of their locks, and a failure there is not this
    delivery's), so a target delivered on its own since the value changed is named as well.
    """
    by_name = {t.name: t for t in delivered}
    changed: dict[str, tuple[str, str]] = {}
    for t_name, c_name, change in changes:
        target = by_name.get(t_name)
        if target is None or change is not Change.CHANGE:
            continue
        spec = target.credential(c_name)
        if spec is not None:
            changed.setdefault(owner(config, target, spec), (t_name, c_name))
    warnings = []
    for other in config.targets.values():
        if other.name in by_name or other.kind != "unit":
            continue
        for spec in other.credentials:
            holder = changed.get(owner(config, other, spec))
            if holder is None:
                continue
            shared = "/".join(holder)
            warnings.append(
                f"{other.name}/{spec.name} shares its value with {shared} through a target: "
                f"link but was not delivered; {shared} changed and {other.name} may still hold "
                f"the old value: run 'credbridge deliver {other.name}'"
            )
    return warnings
