"""Which share of a folder one `batch` process takes, and its GPU, under torchrun or a Slurm array.

``--shard K/N`` (nnU-Net's ``-part_id K -num_parts N``) takes every N-th case from the K-th, of the
cases sorted by name; without it, ``RANK`` / ``WORLD_SIZE`` (set by ``torchrun``) or
``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` (a Slurm job array) give K and N. Shards
share nothing but the output folder, where each case writes its own files.
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
    """``"K/N"`` as given to ``--shard``."""
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        return Shard(int(index), int(count), "--shard")
    except ValueError as error:
        if str(error).startswith("shard"):
            raise
        raise ValueError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {text!r}") from None


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
    else a Slurm array's task (its ``SLURM_ARRAY_TASK_ID`` counted from ``SLURM_ARRAY_TASK_MIN``
    in steps of ``SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT``), else the whole folder."""
    if option is not None:
        return parse_shard(option)
    if "RANK" in env and "WORLD_SIZE" in env:
        return Shard(_integer(env, "RANK"), _integer(env, "WORLD_SIZE"), "torchrun (RANK/WORLD_SIZE)")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = _integer(env, "SLURM_ARRAY_TASK_ID") - _integer(env, "SLURM_ARRAY_TASK_MIN", 0)
        return Shard(task // max(1, _integer(env, "SLURM_ARRAY_TASK_STEP", 1)), _integer(env, "SLURM_ARRAY_TASK_COUNT"),
                     "Slurm array (SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)")
    return Shard()


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
