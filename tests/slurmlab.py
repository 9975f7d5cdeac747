"""A real single-node Slurm on this machine for the tests: Debian's slurm-wlm and munge.

munged runs as the munge user (unless a working one is already there); slurmctld -D and
slurmd -D -N localhost run from a private folder with their own slurm.conf, on free ports, and
are stopped by their pids. Client commands (sbatch, squeue, scancel) find the config through
SLURM_CONF, which the test sshd gives every login (SetEnv). Needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sshlab import free_port

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
KILL_WAIT = 5  # seconds between Slurm's TERM and its KILL


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not (shutil.which(t) or Path(f"/usr/sbin/{t}").exists())]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _node_resources() -> tuple[int, int]:
    """CPUs and RealMemory (MB) as `slurmd -C` reports them for this machine."""
    out = subprocess.run([_tool("slurmd"), "-C"], capture_output=True, text=True, check=True)
    values = dict(word.split("=", 1) for word in out.stdout.split() if "=" in word)
    return int(values["CPUs"]), int(values["RealMemory"])


def _munge_works() -> bool:
    munge = subprocess.run(["munge", "-n"], capture_output=True, check=False)
    if munge.returncode != 0:
        return False
    back = subprocess.run(["unmunge"], input=munge.stdout, capture_output=True, check=False)
    return back.returncode == 0


@dataclass
class Slurm:
    workdir: Path
    cpus: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.workdir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        self.cpus, memory = _node_resources()
        for name in ("state", "spool"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        w = self.workdir
        self.conf.write_text(
            "ClusterName=sptest\nSlurmctldHost=localhost\n"
            f"SlurmctldPort={free_port()}\nSlurmdPort={free_port()}\n"
            "AuthType=auth/munge\nCryptoType=crypto/munge\nSlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={w}/state\nSlurmdSpoolDir={w}/spool\n"
            f"SlurmctldPidFile={w}/slurmctld.pid\nSlurmdPidFile={w}/slurmd.pid\n"
            f"SlurmctldLogFile={w}/slurmctld.log\nSlurmdLogFile={w}/slurmd.log\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "SchedulerType=sched/builtin\nSchedulerParameters=batch_sched_delay=0\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            f"KillWait={KILL_WAIT}\nOverTimeLimit=0\nReturnToService=2\nMpiDefault=none\n"
            "JobCompType=jobcomp/none\nAccountingStorageType=accounting_storage/none\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            f"NodeName=localhost CPUs={self.cpus} RealMemory={memory} State=UNKNOWN\n"
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n"
        )

    def _start_munge(self) -> None:
        if _munge_works():
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        self.processes.append(
            subprocess.Popen(
                ["runuser", "-u", "munge", "--", _tool("munged"), "-F"],
                stdin=subprocess.DEVNULL,
                stderr=open(self.workdir / "munged.log", "wb"),  # noqa: SIM115
            )
        )
        self._poll(_munge_works, 10, "munged did not start")

    def _poll(self, check: object, seconds: float, message: str) -> None:
        assert callable(check)
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{message} (see {self.workdir})")
            time.sleep(0.1)

    def node_state(self) -> str:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    def start(self) -> Slurm:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self._write_conf()
        self._start_munge()
        for argv in (
            [_tool("slurmctld"), "-D", "-f", str(self.conf)],
            [_tool("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)],
        ):
            self.processes.append(subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL))
        self._poll(lambda: self.node_state() == "idle", 30, "the Slurm node did not come up")
        return self

    def squeue_state(self, slurm_job_id: str) -> str:
        """Slurm's state of the job ('' once it has forgotten it); a squeue that fails (a
        busy controller) is asked again, for up to 10 s."""
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(
                ["squeue", "-h", "--states=all", "-j", slurm_job_id, "-o", "%T"],
                env=self.env,
                capture_output=True,
                text=True,
            )
            if out.returncode == 0:
                return out.stdout.strip()
            if "Invalid job id" in out.stderr:
                return ""
            if time.monotonic() > deadline:
                raise RuntimeError(f"squeue did not answer: {out.stderr.strip()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
