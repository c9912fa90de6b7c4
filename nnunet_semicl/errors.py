"""The package's input errors: a problem with what the user gave, not a bug in the package.

Every message names the file, case or option at fault and says how to fix it. The command line
(``nnunet_semicl ...``) reports an :class:`InputError` as ``error: <message>`` with exit status 2 and
no traceback. They derive from ``ValueError``, so ``except ValueError`` keeps catching them.

No imports: every module may raise these.
"""


class InputError(ValueError):
    """Input that cannot be used (a missing dataset, a damaged file, an invalid option)."""


class SplitError(InputError):
    """A labeled/unlabeled split or setting that cannot be made or used."""


class ConversionError(InputError):
    """A dataset that cannot be converted (``convert-acdc``, ``convert-la``)."""


class EvaluationError(InputError):
    """A prediction or reference folder that cannot be evaluated."""


def short_list(items, n: int = 8) -> str:
    """The first ``n`` items of a list for an error message, with how many more there are."""
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more
