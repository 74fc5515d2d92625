"""Slurm as a source of nodes for Ray's autoscaler: ``elasticfl.runtime.slurm.provider.SlurmNodeProvider``.

Ray imports the provider by name (``provider: {type: external, module:
elasticfl.runtime.slurm.provider.SlurmNodeProvider}``); this package imports nothing from Ray itself.
"""

from elasticfl.runtime.slurm.commands import Job, Slurm, SlurmError

__all__ = ["Job", "Slurm", "SlurmError"]
