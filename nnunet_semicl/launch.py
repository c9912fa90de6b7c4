"""How our commands start nnU-Net's: the environment of an nnU-Net subprocess, running a command with its
output streamed and logged, and the shape every ``nnunet_semicl`` sub-command shares (its ``python -m``
entry, exit status 2 for a user's error).

No heavy imports: the command line uses this module while it parses arguments.
"""
import argparse
import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Type

#: glibc settings for CPU training processes (read at process start; docs/small_compute.md).
#: glibc returns every freed block above its mmap threshold (tensors of a few MB) to the kernel, so each
#: training step faults the same memory in again page by page: in a 2d_tiny ACTION++ fine-tuning step,
#: about 40% of the CPU time was kernel time (47 million minor page faults in one demo). Keeping freed
#: memory in the process cut the step from 0.46 s to 0.34-0.36 s on 2 cores; peak memory is unchanged.
CPU_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),   # the largest value glibc accepts on 64-bit
    "MALLOC_TRIM_THRESHOLD_": str(16 * 1024 ** 3),     # never give the heap top back to the kernel
}


def nnunet_env(device: str, training: bool, dirs: Optional[Mapping[str, str]] = None,
               overrides: Optional[Mapping[str, str]] = None,
               base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of an nnU-Net process that one of our commands starts (demo, benchmarks).

    ``base`` (default ``os.environ``) with the nnU-Net folders ``dirs``, then:

    - every process: ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads make CPU work 10x slower on a
      busy machine) and ``nnUNet_def_n_proc=2`` unless ``base`` sets them; ``PYTHONUNBUFFERED=1``; no
      inherited ``nnUNet_n_proc_DA`` (nnU-Net 2.8.1 planning crashes with 0, the CPU training value);
    - the CPU training settings, exactly when ``training`` and ``device`` is ``cpu``, whichever command
      trains (they change speed, never results): ``nnUNet_n_proc_DA=0`` (augmentation workers would
      compete for the same cores), ``nnUNet_compile=f``, and :data:`CPU_MALLOC_ENV` unless ``base`` sets
      them (a user's choice wins);
    - ``overrides`` last: what one command needs beyond that (e.g. the step benchmark loads data in the
      measuring process on every device).
    """
    env = dict(os.environ if base is None else base)
    env.update(dirs or {})
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("nnUNet_def_n_proc", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("nnUNet_n_proc_DA", None)
    if training and device == "cpu":
        env = {**CPU_MALLOC_ENV, **env, "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f"}
    env.update(overrides or {})
    return env


def training_progress(line: str) -> bool:
    """nnU-Net output lines worth echoing while a command trains (``run_command(show=...)``; the rest goes to
    the log)."""
    keys = ("Epoch ", "train_loss", "loss terms", "Pseudo dice", "Mean Validation Dice", "Error", "error",
            "Traceback")
    return any(k in line for k in keys)


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
