"""Where the units of a checkpoint study run: one small interface, three engines.

An executor has ``map(units, progress=True) -> list`` returning, in order, what each unit
returned (its table, or None when its shard already existed).  Units are picklable callables
with ``load()``, ``evaluate(model)``, ``step``, ``name``, ``gpus`` and ``out`` (a checkpoint
study's ``CheckpointUnit``) that write their own shard atomically, so running one twice is
harmless: that is what makes retries safe.  This module knows nothing else about studies
(checkpoint studies import it, never the other way round).

- :class:`LocalExecutor` (default): in this process, one unit at a time, loading the next
  checkpoint on a background thread while the current one is evaluated (``prefetch=False``
  keeps a single model in memory).
- :class:`RayExecutor`: one Ray task per checkpoint, with ``num_gpus`` per task on GPU and
  ``max_retries`` (a worker that dies mid-task is retried by Ray).  ``ray.init()`` starts an
  embedded local cluster when no ``address`` is given (using every local GPU and core);
  ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster.  Needs
  ``pip install 'mechtrunc[ray]'``.
- :class:`SlurmExecutor`: a SLURM job array through submitit, at most ``array_parallelism``
  array elements running at once, ``units_per_task`` checkpoints per element.  With
  ``cluster="local"`` the same code runs on submitit's local executor (tests, laptops).  Needs
  ``pip install 'mechtrunc[slurm]'``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mechtrunc._checks import check_choice, check_int
from mechtrunc._progress import progress_bar
from mechtrunc._scalars import as_int, as_real

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "SlurmExecutor", "resolve_executor", "run_unit", "run_units",
           "EXECUTORS"]

EXECUTORS = ("local", "ray", "slurm")


def run_unit(unit):
    """Module-level entry point for workers (Ray tasks, submitit jobs): ``unit()``."""
    return unit()


def run_units(units: list) -> list:
    """Several units in one worker, one after the other (a SLURM array element)."""
    return [unit() for unit in units]


class Executor(ABC):
    """The interface: ``map(units, progress=True) -> list`` (results in unit order)."""

    name = "executor"
    needs_out = False  # whether results come back only through the shard files

    @abstractmethod
    def map(self, units: list, progress: bool = True) -> list:
        """Run every unit; their results in unit order."""


class LocalExecutor(Executor):
    """In process, one checkpoint at a time; with ``prefetch`` the next checkpoint is loaded on a
    background thread while the current one is evaluated (two models in memory at once)."""

    name = "local"

    def __init__(self, prefetch: bool = True):
        self.prefetch = bool(prefetch)

    def map(self, units, progress=True):
        from mechtrunc.models.hf import free_model

        units = list(units)
        bar = progress_bar(len(units), "checkpoints", "ckpt", enabled=progress)
        results = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechtrunc-prefetch") as pool:
            pending = pool.submit(units[0].load) if units and self.prefetch else None
            for i, unit in enumerate(units):
                bar.set_postfix_str(unit.name, refresh=True)
                model = pending.result() if pending is not None else unit.load()
                pending = pool.submit(units[i + 1].load) if self.prefetch and i + 1 < len(units) else None
                try:
                    results.append(unit.evaluate(model))
                finally:
                    free_model(model)
                    del model
                bar.update(1)
        bar.close()
        return results


class RayExecutor(Executor):
    """One Ray task per checkpoint.

    Args:
        address: None starts an embedded local cluster (``ray.init()``); ``"auto"`` or
            ``"ray://HOST:10001"`` joins one.  Ignored when Ray is already initialised.
        num_gpus: GPUs per task; None: what the study's ``device`` / ``n_devices`` ask for
            (1 on ``cuda``, 0 on CPU).
        num_cpus: CPUs per task (default 1).
        max_retries: how many times Ray reruns a task whose worker died.
        init_kwargs: more ``ray.init`` options (``num_cpus``, ``num_gpus`` of a local cluster...).
    """

    name = "ray"
    needs_out = True

    def __init__(self, address: str | None = None, num_gpus: float | None = None, num_cpus: float = 1,
                 max_retries: int = 3, init_kwargs: dict | None = None):
        self.address = address
        self.num_gpus = None if num_gpus is None else as_real(num_gpus, "num_gpus")
        self.num_cpus = as_real(num_cpus, "num_cpus")
        self.max_retries = as_int(max_retries, "max_retries")
        if self.max_retries < 0 or self.num_cpus < 0 or (self.num_gpus is not None and self.num_gpus < 0):
            raise ValueError("num_gpus, num_cpus and max_retries must be >= 0")
        self.init_kwargs = dict(init_kwargs or {})
        _require("ray", "ray")

    def map(self, units, progress=True):
        import ray

        started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True, **self.init_kwargs}
            # workers must import this mechtrunc (a source checkout on PYTHONPATH included)
            env = kwargs.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env.setdefault("PYTHONPATH", os.pathsep.join(p for p in [_package_root(), os.environ.get("PYTHONPATH", "")] if p))
            ray.init(address=self.address, **kwargs)
            started = True
        try:
            gpus = self.num_gpus if self.num_gpus is not None else max((u.gpus for u in units), default=0.0)
            task = ray.remote(run_unit).options(num_cpus=self.num_cpus, num_gpus=gpus, max_retries=self.max_retries,
                                                retry_exceptions=False)
            refs = [task.remote(u) for u in units]
            index = {ref: i for i, ref in enumerate(refs)}
            results = [None] * len(refs)
            bar = progress_bar(len(refs), "checkpoints (ray)", "ckpt", enabled=progress)
            remaining = list(refs)
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                for ref in done:
                    results[index[ref]] = ray.get(ref)
                    bar.update(1)
            bar.close()
            return results
        finally:
            if started:
                ray.shutdown()


class SlurmExecutor(Executor):
    """A SLURM job array through submitit (``cluster="local"``: submitit's local executor).

    Args:
        folder: where submitit keeps job scripts, pickles and logs (default ``OUT/slurm``).
        partition: ``--partition``; time_min: wall-clock limit per array element (minutes);
        gpus_per_task: GPUs per element (None: the study's device: 1 on cuda, 0 on CPU);
        cpus_per_task, mem_gb: per element; array_parallelism: at most this many elements run
        at once (``slurm_array_parallelism``); units_per_task: checkpoints per element (larger
        amortises the start-up of each job); additional: other ``slurm_*`` submitit parameters
        (without the prefix, e.g. ``{"account": "proj", "qos": "high"}``).
    """

    name = "slurm"
    needs_out = True

    def __init__(self, folder=None, partition: str | None = None, time_min: int = 60, gpus_per_task: int | None = None,
                 cpus_per_task: int = 4, mem_gb: float | None = None, array_parallelism: int = 32,
                 units_per_task: int = 1, cluster: str = "slurm", additional: dict | None = None):
        self.folder = None if folder is None else str(folder)
        self.partition = partition
        self.time_min = check_int("time_min", time_min, 1)
        self.gpus_per_task = None if gpus_per_task is None else as_int(gpus_per_task, "gpus_per_task")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise ValueError(f"gpus_per_task must be >= 0, got {gpus_per_task}")
        self.cpus_per_task = check_int("cpus_per_task", cpus_per_task, 1)
        self.mem_gb = None if mem_gb is None else as_real(mem_gb, "mem_gb")
        self.array_parallelism = check_int("array_parallelism", array_parallelism, 1)
        self.units_per_task = check_int("units_per_task", units_per_task, 1)
        check_choice("submitit cluster", cluster, ("slurm", "local", "debug"), quote=True)
        self.cluster = cluster
        self.additional = dict(additional or {})
        _require("submitit", "slurm")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--executor slurm needs SLURM (no `sbatch` on PATH): run on a SLURM login node, "
                             "or use --executor local / ray")

    def map(self, units, progress=True):
        import submitit

        units = list(units)
        if not units:
            return []
        from mechtrunc.studies.checkpoint_files import CheckpointStudyDirectory

        folder = self.folder or str(CheckpointStudyDirectory(units[0].out or ".").slurm_dir)
        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        gpus = self.gpus_per_task if self.gpus_per_task is not None else int(max(u.gpus for u in units))
        params = dict(timeout_min=self.time_min, cpus_per_task=self.cpus_per_task, gpus_per_node=gpus or None,
                      mem_gb=self.mem_gb, name="mechtrunc-checkpoints",
                      slurm_array_parallelism=self.array_parallelism, slurm_partition=self.partition,
                      **{f"slurm_{k}": v for k, v in self.additional.items()})
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        chunks = [units[i : i + self.units_per_task] for i in range(0, len(units), self.units_per_task)]
        jobs = ex.map_array(run_units, chunks)
        bar = progress_bar(len(units), f"checkpoints ({self.cluster})", "ckpt", enabled=progress)
        results = []
        for job, chunk in zip(jobs, chunks):
            try:
                results.extend(job.result())
            except Exception as e:  # noqa: BLE001 - name the job and its log, keep the cause
                if isinstance(e, ValueError):
                    raise  # a user mistake raised inside the job (e.g. a model that is not available)
                raise RuntimeError(f"{self.cluster} job {job.job_id} (steps {[u.step for u in chunk]}) failed; "
                                   f"its log: {job.paths.stderr}. Finished checkpoints are saved: rerun the same "
                                   f"command to compute the rest") from e
            bar.update(len(chunk))
        bar.close()
        return results


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"the {extra} executor needs {module}: pip install 'mechtrunc[{extra}]' (or pip install {module})")


def resolve_executor(executor) -> Executor:
    """An executor object from None / ``"local"`` / ``"ray"`` / ``"slurm"`` or an object with
    ``map``; ValueError naming the valid choices otherwise."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor()
    if executor == "slurm":
        return SlurmExecutor()
    if hasattr(executor, "map") and not isinstance(executor, str):
        return executor
    raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)} (or an executor object)")

