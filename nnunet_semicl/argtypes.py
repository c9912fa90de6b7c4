"""argparse ``type=`` functions for numeric options: a NaN, negative, zero or out-of-range value is refused
while the command line is parsed, before anything is read or written.

argparse reports a refusal as ``error: argument --seed: must be a whole number >= 0, got -5`` with exit
status 2 (the same status as an :class:`nnunet_semicl.errors.InputError`). No imports beyond argparse/math.
"""
import argparse
import math

#: numpy's RandomState / default_rng seeds are 0 .. 2**32 - 1
MAX_SEED = 2 ** 32 - 1


def _int(text: str, rule: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None


def _float(text: str, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def int_at_least(lowest: int, highest: int = None):
    """A whole number in ``[lowest, highest]``."""
    rule = f"a whole number >= {lowest}" + (f" and <= {highest}" if highest is not None else "")

    def parse(text: str) -> int:
        value = _int(text, rule)
        if value < lowest or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    parse.__name__ = f"int_at_least_{lowest}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = int_at_least(0, MAX_SEED)


def positive_float(text: str) -> float:
    """A finite number > 0 (NaN and inf refused)."""
    rule = "a finite number > 0"
    value = _float(text, rule)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def closed_fraction(text: str) -> float:
    """A fraction from 0 to 1, both included (NaN refused)."""
    rule = "a fraction from 0 to 1 (e.g. 0.5)"
    value = _float(text, rule)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (NaN refused)."""
    rule = "a fraction strictly between 0 and 1 (e.g. 0.1)"
    value = _float(text, rule)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value
