"""Hosts named by an Ansible inventory, as Ansible itself reads it.

``ansible-inventory -i FILE --list`` does the reading, so every format and plugin a user's
Ansible understands works here. Of each host's variables, ansible_host, ansible_port,
ansible_user and ansible_ssh_private_key_file say how to connect; like Ansible, they win over
-l, -p and -i, which still apply to hosts that do not set them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solverpilot_deploy.errors import UsageError
from solverpilot_deploy.ssh import ConnectOptions, parse_spec

INSTALL = "pip install ansible-core"


@dataclass(frozen=True)
class HostTarget:
    """One host to work on: its name in reports, where to connect, and how."""

    name: str
    spec: str
    options: ConnectOptions


def _ansible_inventory() -> str:
    """ansible-inventory beside this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ansible-inventory")
    if found is None:
        raise UsageError(f"--inventory needs Ansible's ansible-inventory; install it: {INSTALL}")
    return found


def read_inventory(path: str) -> dict[str, Any]:
    """The inventory as ``ansible-inventory --list`` gives it."""
    if not os.path.isfile(path):
        raise UsageError(f"no such inventory file: {path}")
    env = {**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", "ANSIBLE_NOCOLOR": "1"}
    try:
        proc = subprocess.run(
            [_ansible_inventory(), "-i", path, "--list"],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise UsageError(f"ansible-inventory did not read {path} within 120 s") from exc
    said = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        raise UsageError(f"ansible-inventory cannot read {path}: {(said or ['failed'])[-1]}")
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise UsageError(f"ansible-inventory gave no JSON for {path}") from exc
    return data


def _group_hosts(data: dict[str, Any], group: str, seen: set[str]) -> list[str]:
    """The hosts of ``group`` and of its children, depth first, in the inventory's order."""
    if group in seen:
        return []
    seen.add(group)
    entry = data.get(group) or {}
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts += _group_hosts(data, child, seen)
    return hosts


def select_hosts(data: dict[str, Any], names: Sequence[str], path: str) -> list[str]:
    """The hosts that ``names`` (groups or hosts; none: all) stand for, each once, in order."""
    hostvars: dict[str, Any] = data.get("_meta", {}).get("hostvars", {})
    known = set(hostvars) | set(_group_hosts(data, "all", set()))
    chosen: list[str] = []
    for name in names or ["all"]:
        if name != "_meta" and name in data:  # a group (Ansible's choice too, when a host
            # has the same name)
            hosts = _group_hosts(data, name, set())
            if not hosts:
                raise UsageError(f"{name}: the group has no hosts in {path}")
            chosen += hosts
        elif name in known:
            chosen.append(name)
        else:
            # ansible-inventory --list leaves out a group without hosts
            raise UsageError(f"{name}: no such host or group in {path}, or a group without hosts")
    return list(dict.fromkeys(chosen))


def _var(variables: dict[str, Any], key: str) -> str | None:
    """A connection variable; Ansible's older ansible_ssh_* spelling where the new is unset."""
    for name in (key, key.replace("ansible_", "ansible_ssh_", 1)):
        value = variables.get(name)
        if value is not None and value != "":
            return str(value)
    return None


def inventory_targets(path: str, names: Sequence[str], options: ConnectOptions) -> list[HostTarget]:
    """One HostTarget per selected host of the inventory at ``path``."""
    data = read_inventory(path)
    hostvars: dict[str, Any] = data.get("_meta", {}).get("hostvars", {})
    targets = []
    for name in select_hosts(data, names, path):
        variables = hostvars.get(name, {})
        address = (_var(variables, "ansible_host") or name).strip("[]")
        port_text = _var(variables, "ansible_port")
        if port_text is not None and not (
            re.fullmatch(r"[0-9]{1,5}", port_text) and 0 < int(port_text) < 65536
        ):
            raise UsageError(f"{name}: ansible_port is not a port: {port_text!r}")
        key = _var(variables, "ansible_ssh_private_key_file") or _var(
            variables, "ansible_private_key_file"
        )
        own = dataclasses.replace(
            options,
            login=_var(variables, "ansible_user") or options.login,
            port=int(port_text) if port_text else options.port,
            identity=key or options.identity,
        )
        spec = f"[{address}]" if ":" in address else address
        try:  # an option-like or malformed address: a usage error, before any host
            parse_spec(spec)
        except UsageError as exc:
            raise UsageError(f"{name} (in {path}): {exc}") from exc
        targets.append(HostTarget(name, spec, own))
    if not targets:
        raise UsageError(f"{path}: no hosts selected")
    return targets
