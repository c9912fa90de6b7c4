"""The converters' command lines: ``nnunet_semicl convert-acdc`` / ``convert-la`` and ``python -m``.

A converter module describes its command in a :class:`ConverterCommand` and exposes its
``add_arguments`` / ``run`` (what ``nnunet_semicl`` calls for every sub-command) and ``main``.

No heavy imports: the command-line help must stay fast.
"""
import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from nnunet_semicl.argtypes import int_at_least, positive_float, positive_int
from nnunet_semicl.launch import exit_2_on, module_main
from nnunet_semicl.dataset_conversion.pipeline import DatasetSpec
from nnunet_semicl.dataset_conversion.protocols import Protocol
from nnunet_semicl.errors import InputError


def default_num_processes() -> int:
    env = os.environ.get("nnUNet_def_n_proc")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return max(1, min(8, os.cpu_count() or 1))


def typed_command() -> str:
    """The command as typed (recorded in the split files and conversion_info.json)."""
    import shlex

    return " ".join([os.path.basename(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])


@dataclass(frozen=True)
class ConverterCommand:
    """One ``convert-*`` command: its arguments are the parameters of ``convert`` (:func:`convert_dataset`)."""
    name: str                      # "convert-acdc"
    spec: DatasetSpec
    convert: Callable[..., dict]   # convert_acdc / convert_la
    description: str               # the converter module's docstring
    input_help: str
    spacing_help: str
    cv_help: str
    #: other protocols than the papers' (``--protocol NAME``): (name, protocol, help); none: no option
    protocols: Tuple[Tuple[str, Protocol, str], ...] = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        spec = self.spec
        p.description = self.description
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.add_argument("-i", "--input", required=True, help=self.input_help)
        p.add_argument("--id", type=positive_int, default=spec.default_id,
                       help=f"dataset id (default {spec.default_id})")
        p.add_argument("--name", default=spec.default_name, help=f"dataset name (default {spec.default_name})")
        p.add_argument("--layout", choices=("auto",) + tuple(spec.locate), default="auto")
        if spec.isotropic_spacing:
            p.add_argument("--spacing", type=positive_float, nargs="+", default=None, metavar="MM",
                           help=self.spacing_help)
        else:
            p.add_argument("--spacing", type=positive_float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                           help=self.spacing_help)
        p.add_argument("--cv", type=int_at_least(2), nargs="?", const=5, default=None, metavar="K", help=self.cv_help)
        if self.protocols:
            p.add_argument("--protocol", choices=("papers",) + tuple(n for n, _, _ in self.protocols),
                           default="papers", help="papers: the papers' protocol (default); "
                           + "; ".join(f"{n}: {h}" for n, _, h in self.protocols))
        p.add_argument("--allow-missing", action="store_true",
                       help=f"convert the protocol {spec.unit}s that are present and leave out absent ones (default: "
                            f"error)")
        p.add_argument("-np", type=positive_int, default=default_num_processes(),
                       help="worker processes (default %(default)s)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset and its split files")
        p.add_argument("--raw", default=None, help="raw root (default $nnUNet_raw)")
        p.add_argument("--preprocessed", default=None, help="preprocessed root for the split files "
                                                            "(default $nnUNet_preprocessed)")
        p.add_argument("-q", "--quiet", action="store_true")

    def run(self, args: argparse.Namespace) -> None:
        """``nnunet_semicl <name>``: ``convert`` with the parsed arguments."""
        chosen = {n: p for n, p, _ in self.protocols}.get(getattr(args, "protocol", "papers"))
        with exit_2_on(self.name, InputError, FileExistsError):
            self.convert(args.input, args.raw, args.preprocessed, args.id, args.name, args.layout, args.spacing,
                         args.cv, args.allow_missing, args.np, args.overwrite, not args.quiet,
                         created_by=typed_command(), **({"protocol": chosen} if chosen else {}))

    def main(self, argv: Optional[Sequence[str]] = None) -> None:
        """``python -m <converter module>``."""
        module_main(f"python -m {self.spec.module}", self.add_arguments, self.run, argv)
