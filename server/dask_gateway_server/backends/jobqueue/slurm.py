"""The Slurm backend under the public dask-gateway server's module path."""

from ..slurm import SlurmBackend, SlurmClusterConfig

__all__ = ["SlurmBackend", "SlurmClusterConfig"]
