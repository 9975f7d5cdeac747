"""Run a job through a cluster's Slurm: the batch script and its submission from a login node.

The batch script (templates/slurm/batch.sh) carries the job id, the working folder, the command
and its arguments as lines of octal escapes, like `run`'s payload, and execs the wrapper, so
Slurm's signals reach the wrapper itself. The submit step (templates/remote/slurm_submit.sh)
keeps it as ~/.solverpilot-server/slurm/JOB_ID.sbatch and runs sbatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from solverpilot_deploy.errors import RemoteCommandError, RequirementError, UsageError
from solverpilot_deploy.jobs import NO_WRAPPER, JobError, check_job_id, run_payload
from solverpilot_deploy.remote import run_step
from solverpilot_deploy.resources import templates_dir
from solverpilot_deploy.safe import printable
from solverpilot_deploy.status import SLURM_DIGITS
from solverpilot_deploy.transport import Session

ARGS_END = "SP_ARGS\n"
PARTITION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MEMORY = re.compile(r"^[0-9]{1,12}[KMGT]?$")


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch's options for one job; None: the cluster's default."""

    partition: str | None = None
    time_s: int | None = None  # the time limit, in seconds (Slurm's MINUTES:SECONDS)
    mem: str | None = None
    cpus: int | None = None
    save_before: int | None = None  # seconds before the time limit: INT to the wrapper
    after: tuple[str, ...] = ()  # jobs (ours, run --via slurm) that must complete first

    def __post_init__(self) -> None:
        if self.partition is not None and not PARTITION.match(self.partition):
            raise ValueError(f"not a partition name: {self.partition!r}")
        if self.mem is not None and not MEMORY.match(self.mem):
            raise ValueError(f"not a memory size (a number, then K, M, G or T): {self.mem!r}")

    def words(self) -> list[str]:
        """The submit step's arguments: plain key=value words."""
        pairs = (
            ("partition", self.partition),
            ("time", None if self.time_s is None else f"{self.time_s // 60}:{self.time_s % 60:02}"),
            ("mem", self.mem),
            ("cpus", self.cpus),
            ("save", self.save_before),
            ("after", ",".join(self.after) or None),
        )
        return [f"{key}={value}" for key, value in pairs if value is not None]


@dataclass(frozen=True)
class Submitted:
    job_id: str
    slurm_job_id: str
    warnings: tuple[str, ...]


def batch_script(job_id: str, cwd: str, argv: list[str]) -> str:
    """templates/slurm/batch.sh with the job's lines in its SP_ARGS here-document."""
    text = (templates_dir() / "slurm" / "batch.sh").read_text(encoding="utf-8")
    head, sep, tail = text.partition(f"\n{ARGS_END}")
    if not sep:
        raise RuntimeError("templates/slurm/batch.sh has no SP_ARGS here-document")
    return f"{head}\n{run_payload(job_id, [cwd, *argv])}{ARGS_END}{tail}"


def submit_job(
    session: Session,
    job_id: str,
    cwd: str,
    argv: list[str],
    options: SlurmOptions,
    timeout: float,
) -> Submitted:
    """Submit ``argv`` under the wrapper with sbatch on the host; return Slurm's job id."""
    if not argv:
        raise ValueError("no command to run")
    script = batch_script(check_job_id(job_id), cwd, argv)
    result = run_step(
        session, "slurm_submit", job_id, *options.words(), timeout=timeout, payload=script
    )
    found = result.values()
    if result.code == "ok" and SLURM_DIGITS.match(found.get("slurm_job_id", "")):
        return Submitted(job_id, found["slurm_job_id"], result.all_of("warning"))
    if result.code == "no_wrapper":
        raise JobError(NO_WRAPPER)
    if result.code == "no_sbatch":
        raise RequirementError("sbatch is not on this host: run --via slurm from a login node")
    if result.code == "id_used":
        raise JobError(f"job id {job_id} is already used on this host")
    if result.code == "sbatch_refused":
        raise JobError(f"sbatch refused the job: {found.get('error', '?')}")
    if result.code == "bad_server_path":
        raise JobError(found.get("error", "the server folder cannot hold Slurm's log"))
    if result.code == "unknown_after":
        raise UsageError(
            f"--after {printable(found.get('unknown', '?'))}: no job run --via slurm of that id "
            "on this host (Slurm's afterok needs a Slurm job); nothing was submitted"
        )
    raise RemoteCommandError(f"cannot submit the job: {result.error()}")
