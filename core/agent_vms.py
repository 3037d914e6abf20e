"""``credbridge agent`` and VM targets (docs/agent.md, "VM targets").

A VM takes its credentials when ``credbridge launch`` starts it. While it runs, the agent
finds the launch through the launcher's runtime directory (the lock file naming its pid),
and for a value the VM takes that changed:

* a channel that changes after boot (the virtiofs share): resolves the VM's credentials and
  has the sink update the share in place, all or nothing (:meth:`VmSink.update`);
* a channel fixed at boot (SMBIOS, fw_cfg): the VM's unit was restarted through the restart
  machinery when its ``on_change`` says so; otherwise the target is marked stale (status
  and log name the values, never show them) until the VM is launched again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from credbridge.core.agent_state import TargetState
from credbridge.core.config import Target
from credbridge.core.errors import CredbridgeError, DeliveryError, ResolutionFailed, SourceError
from credbridge.core.plugins import LAUNCHER, SINK
from credbridge.core.secret import Secret
from credbridge.core.types import Mode, Outcome
from credbridge.core.units import on_change_for
from credbridge.core.vm import VmSink, running_launch

if TYPE_CHECKING:
    from credbridge.core.agent import Agent

log = logging.getLogger("credbridge.core.agent")


def changed_for_vms(agent: Agent, changed: Sequence[tuple[str, str]], restarted: set[str]) -> None:
    """The VMs that take a value this delivery changed: a live one is updated now; one
    whose channel is fixed at boot was restarted (its ``on_change``), or is stale."""
    stale: dict[str, list[str]] = {}
    for target_name, credential in changed:
        for vm in agent.session.affected_by(target_name, credential)[1]:
            state = agent.targets.get(vm.name)
            if state is None:
                continue
            if state.live:
                for cred in state.credentials.values():
                    cred.next_at = min(cred.next_at, time.monotonic())
            elif vm.unit not in restarted:
                stale.setdefault(vm.name, []).append(f"{target_name}/{credential}")
    for name, values in stale.items():
        state = agent.targets[name]
        target = agent.config.targets[name]
        launch = launch_of(agent, target)
        if launch is None:
            continue  # not running: its next launch reads the new values
        state.stale = list(dict.fromkeys([*state.stale, *values]))
        state.stale_launch = launch
        log.warning(
            "%s: the running VM has stale values of %s: its %s channel cannot change "
            "after boot and on_change is %r; restart %s to apply them",
            name,
            ", ".join(values),
            target.sink,
            on_change_for(target, agent.config, agent.restart),
            target.unit,
        )


def launch_of(agent: Agent, target: Target) -> int | None:
    """The pid of the running launch of VM ``target`` (``None``: not running here)."""
    try:
        with agent.session.plugins.guard(LAUNCHER, target.launcher or "", "runtime_dir()"):
            runtime = agent.session.launcher(target).runtime_dir()
    except CredbridgeError as error:
        log.warning("%s: cannot find its runtime directory: %s", target.name, error)
        return None
    return running_launch(runtime) if runtime is not None else None


def update_vm(agent: Agent, state: TargetState) -> None:
    """Resolve the credentials of a running VM's live channel (virtiofs) and write the
    ones that changed into its share, all or nothing; a VM not running is left alone
    (its next launch reads the values itself)."""
    session = agent.session
    target = agent.config.targets[state.name]
    now = time.monotonic()
    due = [c for c in state.credentials.values() if c.next_at <= now]
    launch = launch_of(agent, target)
    if launch is None:
        for cred in due:
            cred.action, cred.next_at = "refresh", now + cred.refresh
        return
    for cred in due:
        if cred.action in {"reissue", "fetch"}:
            session.reissue.add(cred.request)
    creds = list(state.credentials.values())
    values: dict[str, Outcome] = {}
    try:
        outcomes = session.resolve([c.request for c in creds], Mode.DELIVER)
        values = {c.name: outcomes[c.request] for c in creds}
        failures = []
        for cred in creds:
            outcome = values[cred.name]
            if isinstance(outcome, SourceError):
                cred.last_error = f"{outcome.kind}: {outcome.problem}"
                failures.append(outcome.for_credential(state.name, cred.name))
        if failures:
            raise ResolutionFailed(failures)
        runtime = session.launcher(target).runtime_dir()
        sink = session.sink(target)
        if runtime is None or not isinstance(sink, VmSink):
            raise DeliveryError(f"{state.name}: no running VM to update")
        with session.plugins.guard(SINK, target.sink, "update()", passthrough=(OSError,)):
            secrets = {n: v for n, v in values.items() if isinstance(v, Secret)}
            changed = sink.update(session.deliveries(target, secrets), runtime)
    except (CredbridgeError, OSError) as error:
        agent.revoke(session.discard())
        if isinstance(error, OSError):
            message = f"{error.filename or target.name}: {error.strerror or error}"
        else:
            message = str(error)
        agent.failed(state.name, f"share of the running VM not updated: {message}")
        return
    finally:
        for value in values.values():
            if isinstance(value, Secret):
                value.wipe()
    agent.revoke(session.adopt())
    wall = time.time()
    if state.last_error is not None:
        log.warning("%s: updated again after: %s", state.name, state.last_error)
    state.failures, state.last_error = 0, None
    for cred in creds:
        cred.checked_at = wall
        cred.last_error, cred.failures = None, 0
        if cred.name in changed:
            cred.delivered_at = wall
        cred.lease = session.leases.get(cred.request, cred.lease)
        agent.schedule(cred)
    session.leases.clear()
    if changed:
        log.info(
            "%s: share of the running VM (launch pid %d) updated in place (changed: %s)",
            state.name,
            launch,
            ", ".join(changed),
        )
