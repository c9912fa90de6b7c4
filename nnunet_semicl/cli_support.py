"""Shared shape of the ``nnunet_semicl`` sub-commands (no heavy imports: used while parsing arguments)."""
import argparse
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Type


def cli_error(command: str, e: BaseException) -> None:
    print(f"nnunet_semicl {command}: error: {e}", file=sys.stderr)
    raise SystemExit(2)


@contextmanager
def exit_2_on(command: str, *errors: Type[BaseException]) -> Iterator[None]:
    """Report ``errors`` as ``nnunet_semicl <command>: error: ...`` and exit 2, argparse's status for a usage
    error: they are the user's input, not a bug, so no traceback."""
    try:
        yield
    except errors as e:
        cli_error(command, e)


def module_main(prog: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], None], argv: Optional[Sequence[str]] = None) -> None:
    """``python -m <module>``: the arguments and ``run`` of the matching ``nnunet_semicl`` sub-command."""
    p = argparse.ArgumentParser(prog=prog)
    add_arguments(p)
    run(p.parse_args(argv))
