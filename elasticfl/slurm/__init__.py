"""Slurm as a source of nodes for Ray's autoscaler: ``elasticfl.slurm.provider.SlurmNodeProvider``.

Ray imports the provider by name (``provider: {type: external, module:
elasticfl.slurm.provider.SlurmNodeProvider}``); this package imports nothing from Ray itself.
"""

from elasticfl.slurm.commands import Job, Slurm, SlurmError

__all__ = ["Job", "Slurm", "SlurmError"]
