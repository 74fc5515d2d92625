"""Tasks: the client training and central evaluation a run performs."""

from __future__ import annotations

from ._base import ClientData, Task, TrainContext, TrainResult, load_object

__all__ = ["Task", "ClientData", "TrainContext", "TrainResult", "load_object", "build_task"]


def build_task(config, strategy=None) -> Task:
    """The Task a config's ``task`` section describes (imports torch only for the built-in one).

    ``strategy`` (the run's strategy section) gives the built-in task FedProx's ``mu``.
    """
    if config.type == "classification":
        from .classification import ClassificationTask

        return ClassificationTask(config, proximal_mu=getattr(strategy, "mu", 0.0))
    factory = load_object(config.path, "task.path")
    task = factory(**config.params)
    missing = [m for m in ("init_weights", "train", "evaluate") if not callable(getattr(task, m, None))]
    if missing:
        from ..errors import TaskError

        raise TaskError(f"task.path {config.path!r} built an object without {', '.join(missing)}; see elasticfl.tasks.Task")
    return task
