"""--inventory (read by Ansible's own ansible-inventory), --max-fail and --canary, against
real sshd hosts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import Lab, error_text, require, sp, sp_json
from sshlab import TEST_USERS

from solverpilot_deploy.inventory import _ansible_inventory

WRAPPER = ".solverpilot/bin/job_wrapper.sh"


@pytest.fixture(autouse=True)
def needs_ansible() -> None:
    try:
        _ansible_inventory()
    except Exception:
        require(False, "needs ansible-core (pip install ansible-core, in the test extras)")


def host_line(name: str, port: int, user: str) -> str:
    return f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user={user}\n"


def dead_port() -> int:
    return 1  # nothing listens on 127.0.0.1:1: refused at once


def homes(lab: Lab) -> tuple[Path, Path]:
    return Path(lab.users[TEST_USERS[0]].pw_dir), Path(lab.users[TEST_USERS[1]].pw_dir)


def ini_inventory(tmp_path: Path, lab: Lab) -> Path:
    path = tmp_path / "hosts.ini"
    path.write_text(
        "[web]\n"
        + host_line("alpha", lab.a.port, TEST_USERS[0])
        + host_line("beta", lab.b.port, TEST_USERS[1])
        + "\n[db]\n"
        + host_line("gamma", dead_port(), TEST_USERS[0])
        + f"\n[all:vars]\nansible_ssh_private_key_file={lab.client_key}\n"
    )
    return path


def yaml_inventory(tmp_path: Path, lab: Lab) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n  children:\n    cluster:\n      vars:\n"
        f"        ansible_ssh_private_key_file: {lab.client_key}\n"
        "      children:\n"
        "        login:\n          hosts:\n            alpha:\n"
        f"              ansible_host: 127.0.0.1\n              ansible_port: {lab.a.port}\n"
        f"              ansible_user: {TEST_USERS[0]}\n"
        "        compute:\n          hosts:\n            beta:\n"
        f"              ansible_host: 127.0.0.1\n              ansible_port: {lab.b.port}\n"
        f"              ansible_user: {TEST_USERS[1]}\n"
        "    spare:\n      hosts:\n        gamma:\n"
        f"          ansible_host: 127.0.0.1\n          ansible_port: {dead_port()}\n"
    )
    return path


def test_an_ini_inventory_group_with_per_host_vars(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    inventory = ini_inventory(tmp_path, lab)
    code, results = sp_json(
        capsys, "push", "web", "--inventory", str(inventory), "--known-hosts", str(trusted)
    )
    assert code == 0
    assert [(r["host"], r["status"]) for r in results] == [
        ("alpha", "deployed"),
        ("beta", "deployed"),
    ]
    a_home, b_home = homes(lab)
    assert (a_home / WRAPPER).is_file() and (b_home / WRAPPER).is_file()
    # a host of the inventory, for a one-host command
    code, out, err = sp(
        capsys, "status", "beta", "--inventory", str(inventory), "--known-hosts", str(trusted)
    )
    assert code == 0, err
    assert out.split()[0] == "ID"


def test_a_yaml_inventory_with_nested_groups_and_all_by_default(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    inventory = yaml_inventory(tmp_path, lab)
    args = ("--inventory", str(inventory), "--known-hosts", str(trusted), "--timeout", "20")
    code, results = sp_json(capsys, "push", "cluster", *args)
    assert code == 0
    assert [r["host"] for r in results] == ["alpha", "beta"]
    code, results = sp_json(capsys, "verify", *args)  # no name: every host
    assert code == 1, results
    assert [(r["host"], r["status"]) for r in results] == [
        ("alpha", "ok"),
        ("beta", "ok"),
        ("gamma", "failed"),
    ]
    assert str(error_text(results[2])).startswith("unreachable: ")


def test_max_fail_stops_starting_hosts(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[fleet]\n"
        + "".join(host_line(f"dead{i}", dead_port(), TEST_USERS[0]) for i in (1, 2, 3))
        + host_line("alpha", lab.a.port, TEST_USERS[0])
        + f"\n[all:vars]\nansible_ssh_private_key_file={lab.client_key}\n"
    )
    code, results = sp_json(
        capsys,
        "push",
        "--inventory",
        str(inventory),
        "--known-hosts",
        str(trusted),
        "-j",
        "1",
        "--max-fail",
        "2",
    )
    assert code == 1
    assert [(r["host"], r["status"]) for r in results] == [
        ("dead1", "failed"),
        ("dead2", "failed"),
        ("dead3", "skipped"),
        ("alpha", "skipped"),
    ]
    assert error_text(results[3]) == "not started: 2 hosts failed (--max-fail)"
    assert not (homes(lab)[0] / ".solverpilot").exists()


@pytest.mark.parametrize("canary_dead", [True, False])
def test_canary_hosts_go_first_and_alone(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    trusted: Path,
    tmp_path: Path,
    canary_dead: bool,
) -> None:
    first = host_line("canary", dead_port() if canary_dead else lab.a.port, TEST_USERS[0])
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        f"[fleet]\n{first}"
        + host_line("beta", lab.b.port, TEST_USERS[1])
        + f"\n[all:vars]\nansible_ssh_private_key_file={lab.client_key}\n"
    )
    code, results = sp_json(
        capsys,
        "push",
        "fleet",
        "--inventory",
        str(inventory),
        "--known-hosts",
        str(trusted),
        "--canary",
        "1",
    )
    b_wrapper = homes(lab)[1] / WRAPPER
    if canary_dead:
        assert code == 1
        assert [r["status"] for r in results] == ["failed", "skipped"]
        assert error_text(results[1]) == "not started: 1 of the 1 canary hosts did not succeed"
        assert not b_wrapper.exists()
    else:
        assert code == 0
        assert [r["status"] for r in results] == ["deployed", "deployed"]
        assert b_wrapper.is_file()


def test_usage_errors_name_the_problem(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inventory = ini_inventory(tmp_path, lab)
    code, _, err = sp(capsys, "push", "nosuch", "--inventory", str(inventory))
    assert code == 2 and f"nosuch: no such host or group in {inventory}, or a" in err
    code, _, err = sp(capsys, "logs", "web", "x", "--inventory", str(inventory))
    assert code == 2 and "web names 2 hosts" in err  # (status takes a group: its hosts)
    code, _, err = sp(capsys, "push", "--inventory", str(tmp_path / "absent.ini"))
    assert code == 2 and "no such inventory file" in err
    optionlike = tmp_path / "optionlike.ini"
    optionlike.write_text("evil ansible_host=-oProxyCommand=true\n")
    code, _, err = sp(capsys, "push", "--inventory", str(optionlike), "--transport", "openssh")
    assert code == 2 and "not a host: '-oProxyCommand=true'" in err
    broken = tmp_path / "broken.yml"
    broken.write_text("all: [unclosed\n")
    code, _, err = sp(capsys, "push", "--inventory", str(broken))
    assert code == 2 and "ansible-inventory cannot read" in err
    assert "Traceback" not in err
    # without Ansible: a usage error that says how to get it
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = sp(capsys, "push", "--inventory", str(inventory))
    assert code == 2
    assert err.strip() == (
        "sp-deploy: error: --inventory needs Ansible's ansible-inventory; install it: "
        "pip install ansible-core"
    )


def test_older_spellings_and_odd_values(
    capsys: pytest.CaptureFixture[str], lab: Lab, home: Path, trusted: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[old]\n"
        f"alpha ansible_ssh_host=127.0.0.1 ansible_ssh_port={lab.a.port}"
        f" ansible_ssh_user={TEST_USERS[0]}"
        f" ansible_private_key_file={lab.client_key}\n"
        "[empty]\n"
        "[odd]\nsuper ansible_host=127.0.0.1 ansible_port=²\n"
    )
    args = ("--inventory", str(inventory), "--known-hosts", str(trusted))
    code, results = sp_json(capsys, "push", "old", *args)
    assert code == 0 and [(r["host"], r["status"]) for r in results] == [("alpha", "deployed")]
    code, _, err = sp(capsys, "push", "empty", *args)
    assert code == 2 and err.rstrip().endswith("or a group without hosts")
    code, _, err = sp(capsys, "push", "odd", *args)
    assert code == 2 and "super: ansible_port is not a port: '²'" in err
