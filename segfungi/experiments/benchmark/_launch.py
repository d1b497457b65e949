"""Running the benchmark as a Slurm job through submitit (the launcher DINOv2's evaluations
use), or through submitit's local executor (the same path on one machine, for tests).

`launch(settings, out, Launch(...))` submits, with `jobs="per-cell"` (the default), one
job per job unit that is not finished yet (`segfungi.experiments.benchmark._run.job_units`: a
dataset's full-data sizes together, each few-shot list alone; on Slurm one job array),
each running only its unit into the shared results folder, then a merge job that runs
after them all (Slurm: `--dependency=afterany` on the array; local: once they are done):
a plain run that reads every record back, redoes any cell a job left unfinished, and
writes the tables. With `jobs="one"`, one job runs the whole benchmark. Each job runs
`gpus` tasks on one node, one per GPU, each a rank of a torch.distributed group (the
rank, world size and rendezvous come from submitit's job environment, the way torchrun
would give them), so its work is split as under torchrun.

The results folder is the state: a job that is preempted or reaches its time limit is
requeued by submitit (`checkpoint`), and a job that dies is submitted again by the same
command, which submits only the units still lacking records; a rerun reads back every
finished cell and resumes the bank in progress, so only the cell in progress is redone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segfungi.infra.errors import ConfigError, InstallError

__all__ = ["JOBS", "LAUNCHERS", "Launch", "BenchmarkJob", "launch"]

LAUNCHERS = ("slurm", "local")
JOBS = ("per-cell", "one")


@dataclass(frozen=True)
class Launch:
    """Where and how the job runs (the `--launcher`, `--partition`, `--gpus`, `--time` options)."""

    launcher: str = "slurm"  # slurm | local (submitit's LocalExecutor: a process on this machine)
    folder: str = "runs/submitit"  # submitit's logs and pickles; %j is the job id
    partition: str | None = None
    gpus: int = 1  # GPUs on the node = tasks (ranks)
    time_minutes: int = 24 * 60
    cpus_per_task: int = 8
    mem_gb: int | None = None
    jobs: str = "per-cell"  # per-cell: one job per unfinished unit, then a merge job | one: one job


class BenchmarkJob:
    """The job: picklable, and `checkpoint` resubmits itself when Slurm preempts or times it out.
    `only`: the job units it runs (None: all, and it writes the tables)."""

    def __init__(self, settings: dict, out: str, only: list[str] | None = None):
        self.settings, self.out, self.only = settings, str(out), only

    def __call__(self) -> dict:
        from segfungi.experiments.benchmark._run import run_benchmark
        from segfungi.infra import distributed

        _rank_environment()
        distributed.init_from_env()
        report = run_benchmark(self.settings, self.out, progress=False, only=self.only, report=self.only is None)
        return {"records": len(report["records"]), "files": {k: str(v) for k, v in report["files"].items()}}

    def checkpoint(self):
        """submitit calls this on preemption or time-out: the same job again (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(BenchmarkJob(self.settings, self.out, self.only))


def _rank_environment() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from submitit's job environment when a
    job runs several tasks (what torchrun would set); nothing for one task."""
    try:
        import submitit

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return
    if env.num_tasks < 2:
        return
    os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                      LOCAL_WORLD_SIZE=str(env.num_tasks // max(1, env.num_nodes)),
                      MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(20000 + int(env.job_id.split("_")[0]) % 20000))


def executor(launch_settings: Launch):
    """The submitit executor `launch_settings` describe."""
    try:
        import submitit
    except ImportError:
        raise InstallError("--launcher needs submitit: pip install 'segfungi[slurm]' (or pip install submitit)") \
            from None
    if launch_settings.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launch_settings.launcher!r}")
    folder = Path(launch_settings.folder) / "%j"
    if launch_settings.launcher == "local":
        made = submitit.LocalExecutor(folder=folder)
        made.update_parameters(timeout_min=launch_settings.time_minutes, tasks_per_node=launch_settings.gpus,
                               gpus_per_node=0)
        return made
    if not launch_settings.partition:
        raise ConfigError("--launcher slurm needs --partition NAME (the Slurm partition to run on)")
    made = submitit.AutoExecutor(folder=folder, cluster="slurm")
    extra = {"slurm_mem": f"{launch_settings.mem_gb}G"} if launch_settings.mem_gb else {}
    made.update_parameters(name="segfungi-benchmark", slurm_partition=launch_settings.partition,
                           nodes=1, tasks_per_node=launch_settings.gpus, gpus_per_node=launch_settings.gpus,
                           cpus_per_task=launch_settings.cpus_per_task, timeout_min=launch_settings.time_minutes,
                           slurm_signal_delay_s=120, **extra)
    return made


def launch(settings: dict, out: str | Path | None, launch_settings: Launch) -> list:
    """Submits the benchmark's jobs (module docstring); returns the submitit jobs, the one
    that writes the tables last (`jobs[-1].result()` waits for it). The inputs and the
    results folder are checked, and the run recorded, before anything is submitted. With
    the local launcher and per-cell jobs this waits for the cell jobs (the merge job has
    no scheduler to wait for them)."""
    from segfungi.experiments.benchmark._run import prepare_run, unfinished_units

    out = str(out or settings["benchmark"]["out"])
    if launch_settings.jobs not in JOBS:
        raise ConfigError(f"--jobs must be one of {', '.join(JOBS)}, got {launch_settings.jobs!r}")
    made = executor(launch_settings)
    if launch_settings.jobs == "one":
        return [made.submit(BenchmarkJob(settings, out))]
    prepare_run(settings, out)
    units = unfinished_units(settings, out)
    with made.batch():
        cell_jobs = [made.submit(BenchmarkJob(settings, out, only=[unit])) for unit in units]
    if cell_jobs and launch_settings.launcher == "slurm":
        arrays = sorted({job.job_id.split("_")[0] for job in cell_jobs})
        made.update_parameters(slurm_additional_parameters={"dependency": "afterany:" + ":".join(arrays)})
    for job in cell_jobs if launch_settings.launcher == "local" else ():
        job.wait()  # a failed cell job: the merge job redoes its cell (and says why if it fails again)
    return [*cell_jobs, made.submit(BenchmarkJob(settings, out))]
