"""Benchmarks (``nnunet_semicl benchmark ...``): step cost, sampler cost, CPU-scale accuracy.

The one exception to "keep ``__init__.py`` empty": ``nnunet_semicl.cli`` loads sub-commands as
``module.add_arguments(parser)`` / ``module.run(args)``, so the package re-exports them (no heavy import).
"""
from nnunet_semicl.benchmarking.cli import add_arguments, run

__all__ = ["add_arguments", "run"]
