"""Sharding meta-batches over devices and hosts.

A meta-batch has a leading task axis and tasks are independent until the meta-gradient
is averaged, so data parallelism over tasks is exact: put the tasks of each meta-batch
on a mesh with one axis, "tasks", keep the meta-state replicated, and let XLA turn the
mean over tasks into an all-reduce. With `jax.distributed.initialize`, the mesh spans the
devices of every process and each process computes its own share.
"""

from metax.parallel.mesh import TaskMesh
from metax.parallel.mesh import task_mesh

__all__ = [
    "TaskMesh",
    "task_mesh",
]
