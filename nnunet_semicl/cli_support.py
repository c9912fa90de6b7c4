"""Shared shape of the ``nnunet_semicl`` sub-commands (no heavy imports: used while parsing arguments)."""
import argparse
import subprocess
import sys
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Type


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


def run_command(args: Sequence, env: Dict[str, str], log_path: Optional[str] = None, echo: bool = True,
                show: Optional[Callable[[str], bool]] = None, indent: str = "") -> None:
    """Run a command, streaming its output: every line to ``log_path`` (if given), the lines ``show``
    accepts to stdout (``show=None``: none). Exit with the command's last lines when it fails."""
    args = [str(a) for a in args]
    if echo:
        print("$ " + " ".join(args), flush=True)
    tail: List[str] = []
    log = open(log_path, "a") if log_path else None
    try:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            tail = (tail + [line])[-60:]
            if log:
                log.write(line)
                log.flush()
            if show is not None and show(line):
                print(indent + line.rstrip("\n"), flush=True)
        rc = proc.wait()
    finally:
        if log:
            log.close()
    if rc != 0:
        where = f" (log: {log_path})" if log_path else ""
        raise SystemExit(f"Command failed ({rc}){where}: {' '.join(args)}\n{''.join(tail)}")
