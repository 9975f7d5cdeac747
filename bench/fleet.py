"""Fleet push: the wrapper onto 1-100 loopback hosts, sp-deploy against Ansible and pyinfra.

Usage: python bench/fleet.py [--runs N] [--big-runs M] [--sizes 1,10,30,100] [--tools T,...]
(as root: it makes one test user, spfleet00-99, and one sshd per host, as the tests do; needs
the `bench` extra: ansible-core, pyinfra). Sizes of BIG hosts and more get M rounds instead of
N (Ansible alone takes about 50 s a command on 100 hosts); --tools names a subset of TOOLS.

Every host is its own sshd on 127.0.0.1 with its own user (so its own home). Each round, for
each size and tool: the hosts' homes are emptied, the tool deploys the rendered wrapper to
~/.solverpilot/bin/job_wrapper.sh (mode 0755) on every host at once ("first"; sp-deploy's memory
of the hosts emptied too), then again into emptied homes ("seen": the memory kept), then runs
again unchanged ("repeat"). Tools: `sp-deploy push` (each transport; it also checks the sha256
there, creates the DB and runs a smoke job; once with --no-smoke), an Ansible playbook (file +
copy, forks = hosts) and a pyinfra deploy (files.put, --parallel = hosts). Every command
starts cold: Ansible gets a fresh ControlPath folder per command, and its masters are told to
exit after it, so no login is reused across commands. Each round starts with another tool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobcost import SP_DEPLOY, use_checkout
from sshlab import Sshd, authorize, clean_home, ensure_test_user, keygen

TOOLS = (
    "sp-deploy paramiko",
    "sp-deploy paramiko --no-smoke",
    "sp-deploy openssh",
    "sp-deploy openssh curve25519",
    "ansible copy",
    "pyinfra files.put",
)
# "curve25519": an ssh config (-F) whose KexAlgorithms is curve25519-sha256, the key exchange
# paramiko (so sp-deploy's paramiko transport and pyinfra) uses; OpenSSH 9's default is
# post-quantum (sntrup761x25519-sha512, mlkem768x25519-sha256 from 9.9), about 0.1 s of CPU a
# login on each side here
CURVE_CONFIG = "KexAlgorithms curve25519-sha256\n"
# first: into emptied homes, sp-deploy's memory of the hosts (host_facts) emptied too: hosts
# never seen (probe, then install); seen: into emptied homes again, the memory kept (a host
# pushed to before, as with each new version: probe and install in one step); repeat: the same
# command again, nothing to change. Ansible and pyinfra keep nothing: seen is a first for them
PHASES = ("first", "seen", "repeat")
BIG = 100  # from this many hosts on, a size gets --big-runs rounds
DEST = ".solverpilot/bin/job_wrapper.sh"

PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.file: {path: ~/.solverpilot/bin, state: directory, mode: "0755"}
    - ansible.builtin.copy: {src: "%s", dest: "~/%s", mode: "0755"}
"""

DEPLOY = """\
from pyinfra import host
from pyinfra.operations import files

files.put(src=%r, dest=host.data.home + "/%s", mode="755", create_remote_dir=True)
"""


@dataclass
class Host:
    name: str
    sshd: Sshd
    home: str


def tool_bin(name: str) -> str:
    """A tool from this Python's venv, else PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"fleet: {name} not found (pip install -e '.[bench]')")
    return found


class Lab:
    """``count`` loopback hosts, the files each tool reads, and the commands that deploy."""

    def __init__(self, count: int) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="sp-bench-fleet-"))
        self.base.chmod(0o755)
        self.key = keygen(self.base / "client")
        self.known = self.base / "known_hosts"
        self.wrapper = self.base / "job_wrapper.sh"
        self.hosts: list[Host] = []
        subprocess.run(
            [*SP_DEPLOY, "render", "--distro", "debian", "-o", str(self.wrapper)],
            check=True,
        )
        try:
            for n in range(count):
                user = ensure_test_user(f"spfleet{n:02d}")
                authorize(user, self.base / "client.pub")
                clean_home(user)
                sshd = Sshd(self.base / f"sshd{n:02d}", user.pw_name).start()
                self.hosts.append(Host(f"h{n:02d}", sshd, user.pw_dir))
        except BaseException:
            self.close()
            raise
        self.known.write_text("".join(h.sshd.known_hosts_line for h in self.hosts))
        (self.base / "deploy.yml").write_text(PLAYBOOK % (self.wrapper, DEST))
        (self.base / "deploy.py").write_text(DEPLOY % (str(self.wrapper), DEST))

    def clean(self) -> None:
        for host in self.hosts:
            clean_home(ensure_test_user(host.sshd.user))

    def forget(self) -> None:
        """sp-deploy's memory of the hosts (in the lab's cache folder) emptied."""
        for entry in (self.base / ".cache" / "solverpilot-deploy").glob("host-*"):
            entry.unlink()

    def command(self, tool: str, count: int) -> tuple[list[str], dict[str, str]]:
        hosts = self.hosts[:count]
        env = {"HOME": str(self.base), "ANSIBLE_HOME": str(self.base / "ansible")}
        if tool.startswith("sp-deploy"):
            words = tool.split()[1:]
            if "curve25519" in words:
                words.remove("curve25519")
                (self.base / "curve25519.conf").write_text(CURVE_CONFIG)
                words += ["-F", str(self.base / "curve25519.conf")]
            argv = [*SP_DEPLOY, "push", *(h.sshd.spec for h in hosts), "-j",
                    str(count), "-i", str(self.key), "--known-hosts", str(self.known),
                    "--json", "--transport", *words]  # fmt: skip
            return argv, env
        if tool == "ansible copy":
            inventory = self.base / f"hosts-{count}.ini"
            inventory.write_text(
                "".join(
                    f"{h.name} ansible_host=127.0.0.1 ansible_port={h.sshd.port} "
                    f"ansible_user={h.sshd.user}\n"
                    for h in hosts
                )
            )
            env.update(
                ANSIBLE_PRIVATE_KEY_FILE=str(self.key),
                ANSIBLE_SSH_ARGS=f"-o UserKnownHostsFile={self.known} -o BatchMode=yes "
                "-o ControlMaster=auto -o ControlPersist=60s",
                ANSIBLE_SSH_CONTROL_PATH_DIR=tempfile.mkdtemp(dir=self.base, prefix="cp-"),
                ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
                ANSIBLE_HOST_KEY_CHECKING="True",
                ANSIBLE_NOCOLOR="1",
            )
            argv = [tool_bin("ansible-playbook"), "-i", str(inventory), "-f", str(count),
                    str(self.base / "deploy.yml")]  # fmt: skip
            return argv, env
        inventory = self.base / f"inventory_{count}.py"
        data = [(h.name, self.pyinfra_data(h)) for h in hosts]
        inventory.write_text(f"hosts = {data!r}\n")
        argv = [tool_bin("pyinfra"), "-y", "--parallel", str(count), str(inventory),
                str(self.base / "deploy.py")]  # fmt: skip
        return argv, env

    def pyinfra_data(self, host: Host) -> dict[str, object]:
        return {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": host.sshd.port,
            "ssh_user": host.sshd.user,
            "ssh_key": str(self.key),
            "ssh_known_hosts_file": str(self.known),
            "ssh_strict_host_key_checking": "yes",
            "home": host.home,
        }

    def run(self, tool: str, count: int) -> float:
        argv, env = self.command(tool, count)
        start = time.perf_counter()
        done = subprocess.run(
            argv, env={**os.environ, **env}, cwd=self.base, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        self.end_masters(env)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise SystemExit(f"fleet: {tool} on {count} hosts failed: " + " | ".join(tail))
        self.check(count)
        return seconds

    def end_masters(self, env: dict[str, str]) -> None:
        """Ansible's ControlPersist masters of the command just timed exit now, so they cannot
        weigh on the next command's time (a user's next command would reuse them instead)."""
        folder = env.get("ANSIBLE_SSH_CONTROL_PATH_DIR")
        if not folder:
            return
        for socket in Path(folder).iterdir():
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "master"],
                capture_output=True, check=False, timeout=10,
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)

    def check(self, count: int) -> None:
        """Every host has the wrapper, byte for byte and executable: no tool is timed for less."""
        want = self.wrapper.read_bytes()
        for host in self.hosts[:count]:
            got = Path(host.home) / DEST
            if got.read_bytes() != want or not os.access(got, os.X_OK):
                raise SystemExit(f"fleet: {got} is not the wrapper")

    def close(self) -> None:
        for host in self.hosts:
            host.sshd.stop()
            clean_home(ensure_test_user(host.sshd.user))
        shutil.rmtree(self.base, ignore_errors=True)


def measure(
    runs: int,
    sizes: list[int],
    big_runs: int | None = None,
    tools: tuple[str, ...] = TOOLS,
) -> dict[tuple[int, str, str], list[float]]:
    """Seconds per round, keyed by (hosts, tool, phase); one cold round first is dropped.
    Sizes of BIG hosts and more run ``big_runs`` rounds (default: ``runs``)."""
    lab = Lab(max(sizes))
    samples: dict[tuple[int, str, str], list[float]] = {
        (n, tool, phase): [] for n in sizes for tool in tools for phase in PHASES
    }
    rounds = {n: runs if n < BIG or big_runs is None else big_runs for n in sizes}
    try:
        for round_ in range(max(rounds.values()) + 1):
            for n in sizes:
                if round_ > rounds[n]:
                    continue
                turn = round_ % len(tools)  # each round starts with another tool
                for tool in tools[turn:] + tools[:turn]:
                    lab.clean()
                    lab.forget()
                    first = lab.run(tool, n)
                    lab.clean()
                    seen = lab.run(tool, n)
                    repeat = lab.run(tool, n)
                    if round_:
                        for phase, took in zip(PHASES, (first, seen, repeat), strict=True):
                            samples[(n, tool, phase)].append(took)
    finally:
        lab.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-runs", type=int, default=2, help=f"rounds for {BIG}+ hosts")
    parser.add_argument("--sizes", default="1,10,30,100")
    parser.add_argument("--tools", default=",".join(TOOLS), help="a comma-separated subset")
    args = parser.parse_args()
    tools = tuple(args.tools.split(","))
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))} (known: {', '.join(TOOLS)})")
    use_checkout()
    sizes = [int(s) for s in args.sizes.split(",")]
    samples = measure(args.runs, sizes, args.big_runs, tools)
    import run  # (bench/run.py: its rows and table format; it imports this module)

    for (n, tool, phase), values in samples.items():
        median, low, high = run.spread(values)
        print(
            f"{n:3} hosts  {tool:30} {phase:6} {median:7.2f} s  p10-p90 {low:.2f}-{high:.2f}  "
            f"({len(values)} runs)"
        )
    if TOOLS[0] in tools:  # table 3's rows, as bench/run.py writes them
        print("\n".join(run.fleet_table(run.fleet_rows_of(samples, sizes, tools))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
