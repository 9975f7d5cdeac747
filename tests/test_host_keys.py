"""Host keys and the ssh config, with both transports and ``ssh`` itself, against real sshd.

Issue 16 item 4: whatever the user's ssh config says (StrictHostKeyChecking no,
UserKnownHostsFile /dev/null, KnownHostsCommand, NoHostAuthenticationForLocalhost, ... in a
Host block, Host *, Match or an Include), a changed host key is refused and an unknown one
needs --accept-new, with either transport. Item 20: for the configs users write (HostKeyAlias,
several UserKnownHostsFile files, GlobalKnownHostsFile, IdentityFile's %k and %C), each
transport logs in with the account and key, and accepts or refuses the host key, as ``ssh``
does; a keyword paramiko does not implement makes it refuse, naming it, and auto pick openssh.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, error_text, sp_json
from sshlab import TEST_USERS, Sshd, ensure_test_user, keygen, lab_user_name, run_as

USER = TEST_USERS[3]  # the user of the hosts a test starts itself
SP_DEPLOY = str(Path(sys.executable).parent / "sp-deploy")
WRAPPER = ".solverpilot/bin/job_wrapper.sh"


class Keys:
    """Two client keys both authorized for USER, so that the key used can be told apart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.one, self.two = keygen(folder / "one"), keygen(folder / "two")
        self.stale = keygen(folder / "stale")  # a host key no server has
        self.ecdsa = folder / "ecdsa"  # one of a type no server has
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(self.ecdsa)], check=True
        )

    def fingerprint(self, key: Path) -> str:
        said = subprocess.run(
            ["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True, check=True
        ).stdout
        return said.split()[1]


@pytest.fixture(scope="module")
def keys(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("host-keys")
    found = Keys(folder)
    authorized = Path(lab.users[USER].pw_dir) / ".ssh" / "authorized_keys"
    with authorized.open("a") as handle:  # kept: the lab's own key stays authorized
        for key in (found.one, found.two):
            handle.write(Path(f"{key}.pub").read_text())
    return found


@pytest.fixture(scope="module")
def server(lab: Lab, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """An sshd that logs each login with its account and key's fingerprint."""
    started = Sshd(tmp_path_factory.mktemp("hk-sshd"), USER, log_level="INFO").start()
    yield started
    started.stop()


def host_line(server: Sshd, name: str | None = None) -> str:
    kind, blob = server.known_hosts_line.split()[1:3]
    return f"{name or f'[127.0.0.1]:{server.port}'} {kind} {blob}\n"


def stale_line(server: Sshd, keys: Keys, name: str | None = None) -> str:
    """A key of the host's type recorded for it that is not its key: the key has CHANGED."""
    kind, blob = Path(f"{keys.stale}.pub").read_text().split()[:2]
    return f"{name or f'[127.0.0.1]:{server.port}'} {kind} {blob}\n"


def logins(server: Sshd) -> list[tuple[str, str]]:
    """(account, key fingerprint) of every login sshd has accepted so far."""
    found = re.findall(
        r"Accepted publickey for (\S+) from .* ssh2: \S+ (\S+)", server.log.read_text()
    )
    return [(user, fp) for user, fp in found]


def outcome_of_error(error: str) -> str:
    if "is REVOKED" in error:
        return "revoked"
    if "has CHANGED" in error:
        return "changed"
    if "unknown host key" in error:
        return "unknown"
    if "does not implement" in error:
        return "refused"
    if error.startswith("authentication failed"):
        return "auth"
    return f"other: {error}"


def sp_outcome(
    capsys: pytest.CaptureFixture[str], server: Sshd, transport: str, *argv: str
) -> tuple[object, ...]:
    """What one ``sp-deploy verify`` did: ("login", account, key) or how it failed."""
    before = len(logins(server))
    _, results = sp_json(capsys, "verify", *argv, "--transport", transport, "--timeout", "20")
    error = str(error_text(results[0]))
    new = logins(server)[before:]
    if new:
        assert len(set(new)) == 1, new
        return ("login", *new[0])
    return (outcome_of_error(error), error if "does not implement" in error else "")


def ssh_outcome(server: Sshd, config: Path) -> tuple[object, ...]:
    """What a real ``ssh`` login with the same config does."""
    before = len(logins(server))
    proc = subprocess.run(
        [
            "ssh",
            "-F",
            str(config),
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "box",
            "true",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    new = logins(server)[before:]
    if proc.returncode == 0:
        return ("login", *new[0])
    if "REVOKED HOST KEY" in proc.stderr:
        return ("revoked", "")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr:
        return ("changed", "")
    if "Host key verification failed" in proc.stderr:
        return ("unknown", "")
    if "Permission denied" in proc.stderr:
        return ("auth", "")
    return ("other", proc.stderr)


def base_config(server: Sshd, key: Path) -> str:
    return (
        f"Host box\n  HostName 127.0.0.1\n  Port {server.port}\n  User {USER}\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
    )


# ---- item 4: the host key check cannot be turned off by the config ----

# each turns ssh's host key check off (or lets something else vouch for a key)
WEAKENINGS = {
    "StrictHostKeyChecking no": "StrictHostKeyChecking no\n",
    "NoHostAuthenticationForLocalhost": "NoHostAuthenticationForLocalhost yes\n",
    "KnownHostsCommand that vouches for any key": "KnownHostsCommand /bin/echo %H %t %K\n",
    "the rest": "CheckHostIP yes\nUpdateHostKeys yes\nVerifyHostKeyDNS yes\n"
    "StrictHostKeyChecking no\n",
}
# where the weakening is written: the host's block, Host *, a Match, an Include
PLACES = ("host", "host-star", "match", "include")


def weakened_config(
    folder: Path, server: Sshd, key: Path, known: Path, text: str, place: str
) -> Path:
    lines = "".join(f"  {line}\n" for line in text.splitlines())
    config = folder / "config"
    box = base_config(server, key) + f"  UserKnownHostsFile {known}\n"
    if place == "host":
        config.write_text(box + lines)
    elif place == "host-star":
        config.write_text(box + "Host *\n" + lines)
    elif place == "match":
        config.write_text(box + "Match all\n" + lines)
    else:
        (folder / "more.conf").write_text("Host *\n" + lines)
        config.write_text(f"Include {folder}/more.conf\n" + box)
    return config


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("weakening", list(WEAKENINGS))
def test_a_changed_host_key_is_refused_whatever_the_config_says(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
    weakening: str,
    place: str,
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(stale_line(server, keys))
    config = weakened_config(tmp_path, server, keys.one, known, WEAKENINGS[weakening], place)
    # ssh itself, with that config, logs in: the config really turns the check off
    assert ssh_outcome(server, config)[0] == "login"
    known.write_text(stale_line(server, keys))
    before = known.read_text()
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
    assert code == 1 and "has CHANGED" in str(error_text(results[0])), results
    assert results[0]["status"] == "failed"
    assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()  # nothing deployed
    assert known.read_text() == before
    # --accept-new does not make a changed key acceptable either
    code, results = sp_json(
        capsys, "push", "box", "-F", str(config), "--transport", transport, "--accept-new"
    )
    assert code == 1 and "has CHANGED" in str(error_text(results[0])), results
    assert known.read_text() == before


@pytest.mark.parametrize(
    "weakening", ["StrictHostKeyChecking no", "KnownHostsCommand that vouches for any key"]
)
def test_an_unknown_host_needs_accept_new_whatever_the_config_says(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
    weakening: str,
) -> None:
    known = tmp_path / "known_hosts"
    config = weakened_config(tmp_path, server, keys.one, known, WEAKENINGS[weakening], "host-star")
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
    assert code == 1 and "unknown host key" in str(error_text(results[0])), results
    assert not known.exists()
    assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()
    code, results = sp_json(
        capsys, "push", "box", "-F", str(config), "--transport", transport, "--accept-new"
    )
    assert code == 0 and results[0]["status"] == "deployed", results
    # recorded in the file sp-deploy uses (the config's UserKnownHostsFile), the host's key
    recorded = known.read_text().splitlines()
    assert [line.split()[1:] for line in recorded] == [host_line(server).split()[1:]]
    assert stat_mode(known) & 0o022 == 0  # ssh creates it as the umask says; paramiko 0600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def client_user(lab: Lab, keys: Keys) -> Iterator[tuple[object, Path]]:
    """A local user who runs sp-deploy with ~/.ssh/config saying UserKnownHostsFile
    /dev/null and StrictHostKeyChecking no; its key is keys.one."""
    user = ensure_test_user(lab_user_name("spclient_"))
    home = Path(user.pw_dir)
    ssh_dir = home / ".ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    ssh_dir.mkdir(mode=0o700)
    shutil.copy(keys.one, ssh_dir / "id_test")
    yield user, ssh_dir
    shutil.rmtree(ssh_dir, ignore_errors=True)


def chown_tree(folder: Path, user: object) -> None:
    for path in (folder, *folder.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport_name", ["paramiko", "openssh"])
def test_user_known_hosts_file_dev_null_still_checks_the_default_files(
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    client_user: tuple[object, Path],
    transport_name: str,
) -> None:
    """~/.ssh/config: UserKnownHostsFile /dev/null, StrictHostKeyChecking no (Host *). The
    default files (~/.ssh/known_hosts, known_hosts2) are checked and written instead."""
    user, ssh_dir = client_user
    (ssh_dir / "config").write_text(
        base_config(server, ssh_dir / "id_test")
        + "Host *\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n"
    )
    (ssh_dir / "known_hosts").write_text(stale_line(server, keys))
    chown_tree(ssh_dir, user)
    argv = [SP_DEPLOY, "push", "box", "--json", "--transport", transport_name, "--timeout", "20"]
    proc = run_as(user, *argv)  # type: ignore[arg-type]
    assert proc.returncode == 1, proc
    assert "has CHANGED" in proc.stdout, proc
    assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()
    # unknown: refused, then accepted with --accept-new and recorded in ~/.ssh/known_hosts
    (ssh_dir / "known_hosts").unlink()
    proc = run_as(user, *argv)  # type: ignore[arg-type]
    assert proc.returncode == 1 and "unknown host key" in proc.stdout, proc
    proc = run_as(user, *argv, "--accept-new")  # type: ignore[arg-type]
    assert proc.returncode == 0 and '"deployed"' in proc.stdout, proc
    recorded = (ssh_dir / "known_hosts").read_text().split()
    assert recorded[1:] == host_line(server).split()[1:]
    assert (ssh_dir / "known_hosts").stat().st_uid == user.pw_uid  # type: ignore[attr-defined]
    # ~/.ssh/known_hosts2, ssh's second default file, is read too
    (ssh_dir / "known_hosts").unlink()
    (ssh_dir / "known_hosts2").write_text(host_line(server))
    chown_tree(ssh_dir, user)
    proc = run_as(user, *argv)  # type: ignore[arg-type]
    assert proc.returncode == 0 and '"unchanged"' in proc.stdout, proc
    assert not (ssh_dir / "known_hosts").exists()


# ---- item 20: the same account, key and host key as ssh, for the configs users write ----


def connection_hash(config: Path) -> str:
    said = subprocess.run(
        ["ssh", "-G", "-F", str(config), "-o", "ControlPath=%C", "box"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"^controlpath (\S+)$", said, re.MULTILINE)
    assert found
    return found[1]


def matrix_config(name: str, folder: Path, server: Sshd, keys: Keys) -> Path:
    """Config ``name`` of the matrix, with the files it names, in ``folder``."""
    good, empty = folder / "good_hosts", folder / "empty_hosts"
    stale = folder / "stale_hosts"
    good.write_text(host_line(server))
    empty.write_text("")
    stale.write_text(stale_line(server, keys))
    config = folder / "config"
    plain = base_config(server, keys.one)
    aliased = f"  UserKnownHostsFile {folder}/alias_hosts\n  HostKeyAlias "
    extra = {
        "plain": f"  UserKnownHostsFile {good}\n",
        "alias": f"{aliased}myalias\n",
        "alias, key changed": f"{aliased}stale-alias\n",
        "alias, unknown": f"{aliased}nobody-knows\n",
        "second user file": f"  UserKnownHostsFile {empty} {good}\n",
        "stale second user file": f"  UserKnownHostsFile {empty} {stale}\n",
        "global file": f"  UserKnownHostsFile {empty}\n  GlobalKnownHostsFile {good}\n",
        "stale global file": f"  UserKnownHostsFile {empty}\n  GlobalKnownHostsFile {stale}\n",
        "no file knows it": f"  UserKnownHostsFile {empty}\n  GlobalKnownHostsFile {empty}\n",
        "IdentityFile %k": f"  UserKnownHostsFile {good}\n",
        "IdentityFile %C": f"  UserKnownHostsFile {good}\n",
        "IdentityFile %l": f"  UserKnownHostsFile {good}\n",
        "a key file others can read": f"  UserKnownHostsFile {good}\n",
        "a wildcard line": f"  UserKnownHostsFile {folder}/wild_hosts\n",
        "a negated pattern": f"  UserKnownHostsFile {folder}/negated_hosts\n",
        "a revoked key": f"  UserKnownHostsFile {folder}/revoked_hosts\n",
        "recorded without its port": f"  UserKnownHostsFile {folder}/portless_hosts\n",
        "a stale record without its port": f"  UserKnownHostsFile {folder}/stale_portless\n",
        "known only with another type": f"  UserKnownHostsFile {folder}/other_type\n",
        "a stale record, then the right one": f"  UserKnownHostsFile {stale} {good}\n",
        "IdentityAgent elsewhere": f"  UserKnownHostsFile {good}\n"
        f"  IdentityAgent {folder}/no-agent.sock\n",
        "PubkeyAcceptedAlgorithms": f"  UserKnownHostsFile {good}\n"
        "  PubkeyAcceptedAlgorithms rsa-sha2-512\n",
        "HostKeyAlgorithms": f"  UserKnownHostsFile {good}\n  HostKeyAlgorithms ssh-ed25519\n",
        "PubkeyAuthentication no": f"  UserKnownHostsFile {good}\n  PubkeyAuthentication no\n",
        "PreferredAuthentications password": f"  UserKnownHostsFile {good}\n"
        "  PreferredAuthentications password\n",
        "IdentityFile ${VAR}": f"  UserKnownHostsFile {good}\n",
    }[name]
    (folder / "alias_hosts").write_text(
        host_line(server, "myalias") + stale_line(server, keys, "stale-alias") + host_line(server)
    )
    kind_blob = " ".join(host_line(server).split()[1:])
    (folder / "wild_hosts").write_text(f"[127.0.0.1]:* {kind_blob}\n")
    # ssh also looks the host up without its port (127.0.0.1): excluded too
    negated = f"*,![127.0.0.1]:{server.port},!127.0.0.1"
    (folder / "negated_hosts").write_text(f"{negated} {kind_blob}\n")
    (folder / "revoked_hosts").write_text(host_line(server) + f"@revoked * {kind_blob}\n")
    (folder / "portless_hosts").write_text(host_line(server, "127.0.0.1"))
    (folder / "stale_portless").write_text(stale_line(server, keys, "127.0.0.1"))
    ecdsa = " ".join(Path(f"{keys.ecdsa}.pub").read_text().split()[:2])
    (folder / "other_type").write_text(f"[127.0.0.1]:{server.port} {ecdsa}\n")
    if name == "a key file others can read":  # key two, first, 0644: ssh skips it
        shutil.copy(keys.two, folder / "open.id")
        (folder / "open.id").chmod(0o644)
        first = f"  IdentityFile {folder}/open.id\n"
        config.write_text(plain.replace(f"  IdentityFile {keys.one}", first.rstrip()) + extra)
        with config.open("a") as handle:
            handle.write(f"  IdentityFile {keys.one}\n")
        return config
    if name == "IdentityFile ${VAR}":  # ssh expands the environment's SP_MATRIX_KEY
        shutil.copy(keys.two, folder / "env.id")
        os.environ["SP_MATRIX_KEY"] = str(folder / "env.id")
        line = "  IdentityFile ${SP_MATRIX_KEY}\n"
        config.write_text(plain.replace(f"  IdentityFile {keys.one}\n", line) + extra)
        return config
    if name.startswith("IdentityFile"):
        token = name.split()[-1]
        plain = plain.replace(
            f"  IdentityFile {keys.one}\n", f"  IdentityFile {folder}/{token}.id\n"
        )
        config.write_text(plain + extra)
        # the key %k (the host as given: box) or %C names is key two; key one is elsewhere
        named = {"%k": "box", "%l": socket.gethostname()}.get(token) or connection_hash(config)
        shutil.copy(keys.two, folder / f"{named}.id")
        return config
    config.write_text(plain + extra)
    return config


MATRIX = (
    "plain",
    "alias",
    "alias, key changed",
    "alias, unknown",
    "second user file",
    "stale second user file",
    "global file",
    "stale global file",
    "no file knows it",
    "IdentityFile %k",
    "IdentityFile %C",
    "IdentityFile %l",
    "a key file others can read",
    "a wildcard line",
    "a negated pattern",
    "a revoked key",
    "recorded without its port",
    "a stale record without its port",
    "known only with another type",
    "a stale record, then the right one",
    "IdentityAgent elsewhere",
    "PubkeyAcceptedAlgorithms",
    "HostKeyAlgorithms",
    "PubkeyAuthentication no",
    "PreferredAuthentications password",
    "IdentityFile ${VAR}",
)
# paramiko does not implement these: it refuses, naming the keyword; auto picks openssh
PARAMIKO_REFUSES = {
    "IdentityAgent elsewhere",
    "PubkeyAcceptedAlgorithms",
    "PreferredAuthentications password",
}


@pytest.mark.parametrize("name", MATRIX)
def test_both_transports_do_what_ssh_does(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    tmp_path: Path,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SP_MATRIX_KEY", "")  # matrix_config may set it: undone after the test
    config = matrix_config(name, tmp_path, server, keys)
    expected = ssh_outcome(server, config)
    args = ("box", "-F", str(config))
    seen = {t: sp_outcome(capsys, server, t, *args) for t in ("paramiko", "openssh", "auto")}
    assert seen["openssh"] == expected, (seen, expected)
    assert seen["auto"] == expected, (seen, expected)
    if name in PARAMIKO_REFUSES:
        keyword = name.split()[0]
        assert seen["paramiko"][0] == "refused" and keyword in str(seen["paramiko"][1]), seen
    else:
        assert seen["paramiko"] == expected, (seen, expected)
    # the matrix tells the keys and host keys apart: what each config is about shows
    if name.startswith("IdentityFile"):
        assert expected == ("login", USER, keys.fingerprint(keys.two))
    elif name in (
        "alias, key changed",
        "stale second user file",
        "stale global file",
        "known only with another type",
    ):
        assert expected[0] == "changed"
    elif name in (
        "alias, unknown",
        "no file knows it",
        "a negated pattern",
        "a stale record without its port",
    ):
        assert expected[0] == "unknown"
    elif name == "a revoked key":
        assert expected[0] == "revoked"
    elif name in (
        "PubkeyAcceptedAlgorithms",
        "PubkeyAuthentication no",
        "PreferredAuthentications password",
    ):
        assert expected[0] == "auth"
    elif name not in PARAMIKO_REFUSES:
        assert expected == ("login", USER, keys.fingerprint(keys.one))


def test_accept_new_records_under_the_alias_and_hashed_as_ssh_does(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first_hosts", tmp_path / "second_hosts"
    config = tmp_path / "config"
    config.write_text(
        base_config(server, keys.one)
        + f"  HostKeyAlias myalias\n  UserKnownHostsFile {first} {second}\n  HashKnownHosts yes\n"
    )
    _code, results = sp_json(
        capsys, "verify", "box", "-F", str(config), "--transport", transport, "--accept-new"
    )
    assert outcome_of_error(str(error_text(results[0]))) != "unknown", results
    assert not second.exists()
    (line,) = first.read_text().splitlines()
    assert line.startswith("|1|")  # hashed
    found = subprocess.run(
        ["ssh-keygen", "-F", "myalias", "-f", str(first)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0 and host_line(server).split()[2] in found.stdout
    # and ssh itself accepts what was recorded
    assert ssh_outcome(server, config)[0] == "login"


@pytest.fixture(scope="module")
def hop(lab: Lab, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A jump host (same user), which forwards to the others."""
    started = Sshd(tmp_path_factory.mktemp("hk-hop"), USER, log_level="INFO").start()
    yield started
    started.stop()


@pytest.mark.parametrize("broken", ["first hop", "second hop"])
def test_a_jump_host_whose_key_changed_is_refused_whatever_its_config_says(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    hop: Sshd,
    transport: str,
    tmp_path: Path,
    broken: str,
) -> None:
    """box through hop1 then hop2 (the same sshd under two names): the config lets a
    KnownHostsCommand vouch for any key of the hops, whose recorded key is stale; box's is
    right. (A changed key under StrictHostKeyChecking no is refused by ssh's -W itself.)"""
    known = tmp_path / "known_hosts"
    config = tmp_path / "config"
    hops = ""
    for name in ("hop1", "hop2"):
        hops += (
            f"Host {name}\n  HostName 127.0.0.1\n  Port {hop.port}\n  User {USER}\n"
            f"  IdentityFile {keys.one}\n  IdentitiesOnly yes\n  HostKeyAlias {name}\n"
            f"  UserKnownHostsFile {known}\n  KnownHostsCommand /bin/echo %H %t %K\n"
        )
    config.write_text(
        base_config(server, keys.one)
        + f"  UserKnownHostsFile {known}\n  ProxyJump hop1,hop2\n"
        + hops
        + "Host *\n  StrictHostKeyChecking no\n  BatchMode yes\n"
    )
    good = host_line(server) + host_line(hop, "hop1") + host_line(hop, "hop2")
    known.write_text(good)
    # the config and the hops work: sp-deploy goes through them when every key is right
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
    assert code == 0 and results[0]["status"] == "deployed", results
    (Path(lab.users[USER].pw_dir) / WRAPPER).unlink()
    stale_hop = "hop1" if broken == "first hop" else "hop2"
    known.write_text(good.replace(host_line(hop, stale_hop), stale_line(hop, keys, stale_hop)))
    assert ssh_outcome(server, config)[0] == "login"  # ssh itself, with this config, goes on
    before = known.read_text()
    code, results = sp_json(
        capsys, "push", "box", "-F", str(config), "--transport", transport, "--accept-new"
    )
    error = str(error_text(results[0]))
    assert code == 1 and "has CHANGED" in error and stale_hop in error, results
    assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()
    assert known.read_text() == before


@pytest.fixture
def sticky() -> Iterator[Path]:
    """A folder like /tmp: sticky and writable by every user."""
    folder = Path(tempfile.mkdtemp(prefix="sp-sticky-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_known_hosts_file_another_user_planted_is_not_trusted_nor_written(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
    sticky: Path,
) -> None:
    """--known-hosts /tmp/NAME: another user made it first (a file of theirs holding the key
    they want trusted, or a link to a file of the victim's)."""
    evil = ensure_test_user(lab_user_name("spevil_"))
    planted = sticky / "known_hosts"
    script = f"cat > {planted}"
    assert run_as(evil, "sh", "-c", script, input=host_line(server)).returncode == 0
    argv = ("push", server.spec, "-i", str(keys.one), "--transport", transport)
    code, results = sp_json(capsys, *argv, "--known-hosts", str(planted))
    error = str(error_text(results[0]))
    assert code == 1 and error.startswith("host key: refusing to trust"), results
    assert f"owned by {evil.pw_name}" in error
    assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()
    planted.unlink()
    mine = tmp_path / "victims_file"
    mine.write_text("precious\n")
    assert run_as(evil, "ln", "-s", str(mine), str(planted)).returncode == 0
    code, results = sp_json(capsys, *argv, "--known-hosts", str(planted), "--accept-new")
    assert code == 1 and "refusing to trust" in str(error_text(results[0])), results
    assert mine.read_text() == "precious\n"


def test_a_host_certificate_is_checked_by_openssh_and_refused_by_paramiko(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """known_hosts trusts a host CA (@cert-authority); the host presents a certificate."""
    ca = keygen(tmp_path / "host_ca")
    workdir = tmp_path / "certified"
    workdir.mkdir()
    host_key = keygen(workdir / "host_ed25519")
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca),
            "-h",
            "-I",
            "sp-host",
            "-n",
            "127.0.0.1",
            f"{host_key}.pub",
        ],
        check=True,
    )
    certified = Sshd(
        workdir,
        USER,
        log_level="INFO",
        extra_config=f"HostCertificate {host_key}-cert.pub\n",
    ).start()
    try:
        known = tmp_path / "known_hosts"
        kind_blob = " ".join(Path(f"{ca}.pub").read_text().split()[:2])
        known.write_text(f"@cert-authority * {kind_blob}\n")
        config = tmp_path / "config"
        config.write_text(base_config(certified, keys.one) + f"  UserKnownHostsFile {known}\n")
        expected = ssh_outcome(certified, config)
        assert expected == ("login", USER, keys.fingerprint(keys.one))
        args = ("box", "-F", str(config))
        assert sp_outcome(capsys, certified, "openssh", *args) == expected
        assert sp_outcome(capsys, certified, "auto", *args) == expected
        refused = sp_outcome(capsys, certified, "paramiko", *args)
        assert refused[0] == "refused" and "@cert-authority" in str(refused[1]), refused
        _, results = sp_json(capsys, "verify", *args, "--transport", "auto")
        assert "@cert-authority" in str(results[0]["warnings"])
    finally:
        certified.stop()


def test_a_proxy_jump_written_as_an_ssh_uri(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    hop: Sshd,
    transport: str,
    tmp_path: Path,
) -> None:
    # a % in the paths: each level of the jump's ProxyCommand expands %-tokens once
    known = tmp_path / "known%hosts"
    known.write_text(host_line(server) + host_line(hop))
    config = tmp_path / "con%fig"
    config.write_text(
        base_config(server, keys.one)
        + f"  ProxyJump ssh://{USER}@127.0.0.1:{hop.port}\n"
        + f"Host *\n  IdentityFile {keys.one}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        + f"  UserKnownHostsFile {str(known).replace('%', '%%')}\n"
    )
    code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
    assert code == 0 and results[0]["status"] == "deployed", results


@pytest.mark.transports("openssh")
def test_the_users_master_is_not_used_when_its_config_skips_the_host_key_check(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    home: Path,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
) -> None:
    """The user's own ControlMaster, up through a config that says StrictHostKeyChecking no,
    is connected to a host whose key changed: sp-deploy does not go through it."""
    control = Path(tempfile.mkdtemp(prefix="cm-"))  # a socket path must be short
    known = tmp_path / "known_hosts"
    known.write_text(stale_line(server, keys))
    config = tmp_path / "config"
    config.write_text(
        base_config(server, keys.one)
        + f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking no\n"
        + f"  ControlMaster auto\n  ControlPath {control}/%C\n  ControlPersist 60\n"
    )
    base = ["ssh", "-F", str(config)]
    try:
        subprocess.run([*base, "-M", "-N", "-f", "box"], check=True, timeout=30)
        assert subprocess.run([*base, "-O", "check", "box"], check=False).returncode == 0
        code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
        assert code == 1 and "has CHANGED" in str(error_text(results[0])), results
        assert "StrictHostKeyChecking no" in str(results[0]["warnings"])
        assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()
    finally:
        subprocess.run([*base, "-O", "exit", "box"], check=False, capture_output=True)
        shutil.rmtree(control, ignore_errors=True)


@pytest.mark.parametrize("transport_name", ["paramiko", "openssh"])
@pytest.mark.parametrize("separator", ["\x1c", "\x1e", "\f", "\v", "\x85", "\u2028"])
def test_a_known_hosts_line_ends_where_ssh_ends_it(
    capsys: pytest.CaptureFixture[str],
    server: Sshd,
    keys: Keys,
    tmp_path: Path,
    transport_name: str,
    separator: str,
) -> None:
    """ssh ends a known_hosts line at a newline alone: a changed key recorded on a line that
    holds the real key after a \\x1c (Python's splitlines ends a line there) is CHANGED."""
    known = tmp_path / "known_hosts"
    known.write_text(
        stale_line(server, keys).rstrip("\n") + f" note{separator}" + host_line(server)
    )
    client = str(keys.one)
    argv = (f"{USER}@127.0.0.1:{server.port}", "-i", client, "--known-hosts", str(known))
    assert sp_outcome(capsys, server, transport_name, *argv)[0] == "changed"


@pytest.mark.transports("openssh")
@pytest.mark.parametrize("planted", ["socket of another user", "folder others can write"])
def test_a_master_socket_another_user_could_have_put_there_is_not_used(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
    planted: str,
) -> None:
    """ssh talks to whatever master listens at the ControlPath: one that is another user's
    (a ControlPath in /tmp is a common habit), or in a folder others can write, may be theirs,
    logged in to their account or faking the host's answers. sp-deploy opens its own."""
    control = Path(tempfile.mkdtemp(prefix="cm-"))  # a socket path must be short
    known = tmp_path / "known_hosts"
    known.write_text(host_line(server))
    config = tmp_path / "config"
    config.write_text(
        base_config(server, keys.one)
        + f"  UserKnownHostsFile {known}\n"
        + f"  ControlMaster auto\n  ControlPath {control}/%C\n  ControlPersist 60\n"
    )
    base = ["ssh", "-F", str(config)]
    other = lab.users[TEST_USERS[1]]
    try:
        subprocess.run([*base, "-M", "-N", "-f", "box"], check=True, timeout=30)
        (socket_path,) = control.iterdir()
        if planted == "socket of another user":
            os.chown(socket_path, other.pw_uid, other.pw_gid)  # as if they had made it
        else:
            control.chmod(0o777)
        code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
        assert code == 0, results
        warned = " ".join(results[0]["warnings"])  # type: ignore[arg-type]
        assert "your ControlMaster for this host is not used" in warned, results
        why = "is not a socket of yours" if "socket" in planted else "can be written by others"
        assert why in warned, warned
    finally:
        subprocess.run([*base, "-O", "exit", "box"], check=False, capture_output=True)
        shutil.rmtree(control, ignore_errors=True)


@pytest.mark.transports("openssh")
@pytest.mark.parametrize("opened_by", ["another alias", "options on ssh's command line"])
def test_the_users_master_opened_under_other_options_cannot_let_a_changed_key_in(
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    keys: Keys,
    server: Sshd,
    transport: str,
    tmp_path: Path,
    opened_by: str,
) -> None:
    """The config of the host asked for checks its key strictly, but the user's master for
    it (the same ControlPath: same host, port and user) was opened by another alias, or with
    -o StrictHostKeyChecking=no, against a known_hosts that records another key: sp-deploy
    does not go through it and refuses the host."""
    (Path(lab.users[USER].pw_dir) / WRAPPER).unlink(missing_ok=True)  # an earlier test's
    control = Path(tempfile.mkdtemp(prefix="cm-"))  # a socket path must be short
    known = tmp_path / "known_hosts"
    known.write_text(stale_line(server, keys))
    config = tmp_path / "config"
    master = f"  ControlMaster auto\n  ControlPath {control}/%C\n  ControlPersist 60\n"
    quick = base_config(server, keys.one).replace("Host box", "Host box-quick")
    config.write_text(
        base_config(server, keys.one)
        + f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n{master}"
        + quick
        + f"  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n{master}"
    )
    base = ["ssh", "-F", str(config)]
    opener = (
        [*base, "box-quick"]
        if opened_by == "another alias"
        else [*base, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "box"]
    )
    try:
        subprocess.run([*opener[:-1], "-M", "-N", "-f", opener[-1]], check=True, timeout=30)
        assert subprocess.run([*base, "-O", "check", "box"], check=False).returncode == 0
        code, results = sp_json(capsys, "push", "box", "-F", str(config), "--transport", transport)
        assert code == 1 and "has CHANGED" in str(error_text(results[0])), results
        assert not (Path(lab.users[USER].pw_dir) / WRAPPER).exists()
    finally:
        subprocess.run([*base, "-O", "exit", "box"], check=False, capture_output=True)
        shutil.rmtree(control, ignore_errors=True)
