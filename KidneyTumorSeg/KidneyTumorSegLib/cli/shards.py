"""Which share of a folder one `batch` process takes, and its GPU, under torchrun or a Slurm array.

``--shard K/N`` (nnU-Net's ``-part_id K -num_parts N``) takes every N-th case from the K-th, of the
cases sorted by name; without it, ``RANK`` / ``WORLD_SIZE`` (set by ``torchrun``) or
``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` (a Slurm job array, whose ids may start at 1
or anywhere: the task's place from ``SLURM_ARRAY_TASK_MIN`` is K) give K and N. K counts from 0.
Shards share nothing but the output folder, where each case writes its own files.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count); ``source`` says where it came from."""

    index: int = 0
    count: int = 1
    source: str = "one process"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} ({self.source}): needs 0 <= K < N")

    def take(self, names: Sequence[str]) -> list[str]:
        """This shard's names: every ``count``-th of ``names`` from the ``index``-th."""
        return list(names[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` as given to ``--shard``; shards count from 0."""
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        shard_index, shard_count = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {text!r}") from None
    if shard_index == shard_count > 0:
        raise ValueError(f"--shard {text}: shards count from 0, so the last of {shard_count} is "
                         f"{shard_count - 1}/{shard_count}; in a Slurm array leave --shard out and batch reads its "
                         "task from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_MIN, whatever the first id")
    return Shard(shard_index, shard_count, "--shard")


def _integer(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def shard_from(option: str | None, env: Mapping[str, str]) -> Shard:
    """The shard of this process: ``--shard`` when given, else torchrun's ``RANK`` / ``WORLD_SIZE``,
    else a Slurm array's task (:func:`slurm_shard`), else the whole folder."""
    if option is not None:
        return parse_shard(option)
    if "RANK" in env and "WORLD_SIZE" in env:
        return Shard(_integer(env, "RANK"), _integer(env, "WORLD_SIZE"), "torchrun (RANK/WORLD_SIZE)")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        return slurm_shard(env)
    return Shard()


def slurm_shard(env: Mapping[str, str]) -> Shard:
    """The shard of a Slurm array task: its ``SLURM_ARRAY_TASK_ID``'s place among the array's
    ``SLURM_ARRAY_TASK_COUNT`` ids, which run from ``SLURM_ARRAY_TASK_MIN`` to ``SLURM_ARRAY_TASK_MAX``
    in steps of ``SLURM_ARRAY_TASK_STEP``: ``--array=0-7`` and ``--array=1-8`` both give shards
    0/8 ... 7/8. Without ``MIN``, the first id follows from ``MAX`` (else 0). ValueError when the ids
    are not evenly spaced (``--array=1,2,5``): the place of a task is then unknown."""
    task, count = _integer(env, "SLURM_ARRAY_TASK_ID"), _integer(env, "SLURM_ARRAY_TASK_COUNT")
    step = max(1, _integer(env, "SLURM_ARRAY_TASK_STEP", 1))
    last = _integer(env, "SLURM_ARRAY_TASK_MAX") if "SLURM_ARRAY_TASK_MAX" in env else None
    if "SLURM_ARRAY_TASK_MIN" in env:
        first = _integer(env, "SLURM_ARRAY_TASK_MIN")
    else:
        first = 0 if last is None else last - step * (count - 1)
    index, offset = divmod(task - first, step)
    regular = last is None or last == first + step * (count - 1)
    if offset or not regular or not 0 <= index < count:
        raise ValueError(f"Slurm array task {task} is not one of {count} evenly spaced ids from {first} in steps of {step}"
                         f"{'' if last is None else f' to {last}'}: give each task --shard K/N (K from 0)")
    return Shard(index, count, "Slurm array (SLURM_ARRAY_TASK_ID from SLURM_ARRAY_TASK_MIN, of SLURM_ARRAY_TASK_COUNT)")


def shard_device(device: str, env: Mapping[str, str], cuda_devices: int) -> str:
    """``--device`` for this process: under ``auto`` with torchrun's ``LOCAL_RANK``, that GPU of
    this node (``cuda:LOCAL_RANK``) when there are GPUs; otherwise ``device`` unchanged."""
    if device != "auto" or "LOCAL_RANK" not in env or cuda_devices == 0:
        return device
    local_rank = _integer(env, "LOCAL_RANK")
    if not 0 <= local_rank < cuda_devices:
        raise ValueError(f"LOCAL_RANK={local_rank} but this node has {cuda_devices} GPU(s): start at most "
                         f"{cuda_devices} processes per node")
    return f"cuda:{local_rank}"
