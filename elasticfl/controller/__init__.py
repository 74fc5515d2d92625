"""The engine: the round loop as a plain class and the values it exchanges."""

from ._controller import STATUS_FILE, Controller
from ._types import ClientReport, ExecutorPool, RunState, UnitResult

__all__ = ["Controller", "ClientReport", "ExecutorPool", "RunState", "UnitResult", "STATUS_FILE"]
