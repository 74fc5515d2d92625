"""Everything that touches Ray: actors, the executor pool, resource options, connecting."""

from ._cluster import connect, controller_name, ship_runtime_env
from ._controller_actor import ControllerActor, make_store
from ._pool import RayExecutorPool
from ._resources import executor_options, executors_that_fit, resource_bundle

__all__ = [
    "ControllerActor",
    "RayExecutorPool",
    "connect",
    "controller_name",
    "executor_options",
    "executors_that_fit",
    "resource_bundle",
    "make_store",
    "ship_runtime_env",
]
