"""Slurm's command-line clients (sbatch, squeue, scancel, scontrol) behind one small class.

The node provider talks to Slurm only through ``Slurm``, so its logic can be tested with
recorded outputs: pass a ``runner`` with the signature of ``subprocess.run`` that returns
objects with ``returncode``, ``stdout`` and ``stderr``.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

# squeue's fields, in order; the comment (tags, JSON) comes last since it may hold anything.
_SEP = "|"
_FORMAT = _SEP.join(["%i", "%T", "%r", "%N", "%j", "%k"])


class SlurmError(RuntimeError):
    """A Slurm command failed; ``stderr`` holds Slurm's own words."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str):
        self.cmd, self.returncode, self.stderr = list(cmd), returncode, stderr.strip()
        super().__init__(f"{cmd[0]} failed ({returncode}): {self.stderr or '(no message)'}")


@dataclass(frozen=True)
class Job:
    """One line of squeue."""

    id: str
    state: str  # PENDING, RUNNING, COMPLETING, ... (squeue's long names)
    reason: str  # why it pends ("Resources", "PartitionConfig", ...); "None" when running
    nodes: str  # the allocated node list ("" while pending)
    name: str
    comment: str  # "" when none

    @classmethod
    def parse(cls, line: str) -> "Job":
        job_id, state, reason, nodes, name, comment = line.split(_SEP, 5)
        comment = "" if comment.strip() == "(null)" else comment.strip()
        return cls(job_id.strip(), state.strip(), reason.strip(), nodes.strip(), name.strip(), comment)


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment for Slurm's clients, less what would leak into a new job
    from a job this process may run in (SLURM_*, SBATCH_* input variables), SLURM_CONF kept."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not ((k.startswith("SLURM_") and k != "SLURM_CONF") or k.startswith("SBATCH_") or k.startswith("SALLOC_"))
    }
    env.update(extra or {})
    return env


class Slurm:
    """sbatch, squeue, scancel and scontrol for one user's jobs."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        runner: Callable[..., Any] = subprocess.run,
        timeout_s: float = 30,
    ):
        self.env = dict(env or {})
        self.user = user or getpass.getuser()
        self._run = runner
        self.timeout_s = timeout_s

    def _call(self, cmd: list[str], input: str | None = None, env: Mapping[str, str] | None = None) -> str:
        try:
            done = self._run(
                cmd, input=input, capture_output=True, text=True, timeout=self.timeout_s,
                env=_clean_env({**self.env, **(env or {})}),
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise SlurmError(cmd, 127, f"{cmd[0]} not found: is Slurm's client installed and on PATH?") from exc
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(cmd, 124, f"no answer within {self.timeout_s:.0f}s") from exc
        if done.returncode != 0:
            raise SlurmError(cmd, done.returncode, done.stderr or done.stdout or "")
        return done.stdout

    def submit(self, script: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        """sbatch the script (read from stdin) with these options; the new job's id.

        ``env`` reaches the job through sbatch's environment (``--export=ALL``), not its
        command line, so that secrets such as RAY_AUTH_TOKEN do not show up in ``ps``.
        """
        out = self._call(["sbatch", "--parsable", "--export=ALL", *args], input=script, env=env)
        job_id = out.strip().splitlines()[-1].split(";")[0].strip() if out.strip() else ""
        if not job_id.isdigit():
            raise SlurmError(["sbatch"], 0, f"unexpected answer: {out!r}")
        return job_id

    def queue(self) -> list[Job]:
        """This user's jobs that Slurm still lists as active (pending, running, completing...)."""
        out = self._call(["squeue", "--noheader", f"--user={self.user}", f"--format={_FORMAT}"])
        return [Job.parse(line) for line in out.splitlines() if line.strip()]

    def cancel(self, job_ids: Sequence[str], signal: str | None = None) -> None:
        if not job_ids:
            return
        cmd = ["scancel", *([f"--signal={signal}"] if signal else []), *job_ids]
        self._call(cmd)

    def set_comment(self, job_id: str, comment: str) -> None:
        self._call(["scontrol", "update", f"JobId={job_id}", f"Comment={comment}"])
