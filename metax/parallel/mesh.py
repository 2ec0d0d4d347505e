"""A one-axis device mesh for the task axis of meta-batches."""

from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class TaskMesh(NamedTuple):
    """Shardings for data parallelism over tasks.

    Example:
      >>> metax.parallel.TaskMesh._fields
      ('mesh', 'replicated', 'by_task')
    """

    mesh: Mesh  # one axis, "tasks"
    replicated: NamedSharding  # for the meta-state: a full copy on every device
    by_task: NamedSharding  # for meta-batches: the leading (task) axis split over devices

    def shard_tasks(self, metabatch: Any) -> Any:
        """Inside jit: constrains every leaf of a meta-batch to be split along its task axis."""
        return jax.lax.with_sharding_constraint(metabatch, self.by_task)

    def replicate(self, tree: Any) -> Any:
        """Places a pytree (e.g. the meta-state) on every device of the mesh."""
        return jax.device_put(tree, self.replicated)


def task_mesh(devices: int, meta_batch_size: int) -> Optional[TaskMesh]:
    """A mesh over the first `devices` devices (of all processes), or None for one device
    in one process.

    Raises:
      ValueError: for more devices than exist, or a meta-batch that does not split evenly,
        saying what to change.

    Example:
      >>> metax.parallel.task_mesh(1, meta_batch_size=8) is None  # one device: no mesh
      True
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive int, got {devices!r}.")
    if devices == 1 and jax.process_count() == 1:
        return None
    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f"train.devices={devices} but {len(available)} device(s) are visible ({available[0].platform}); "
            "use fewer, or on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting."
        )
    if meta_batch_size % devices:
        lower, upper = (meta_batch_size // devices) * devices, (meta_batch_size // devices + 1) * devices
        raise ValueError(
            f"meta_batch_size={meta_batch_size} does not split over {devices} devices; use a multiple of "
            f"{devices} (e.g. {lower or upper} or {upper}) or another device count."
        )
    mesh = Mesh(np.array(available[:devices]), ("tasks",))
    return TaskMesh(mesh, NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("tasks")))
