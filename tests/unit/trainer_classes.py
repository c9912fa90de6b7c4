"""A trainer class's term arithmetic without nnU-Net state (for tests of term tables and phases)."""


def configured(cls, epochs=100, **settings):
    """An instance of ``cls`` (no ``__init__``) as a training of ``epochs`` would run it, with ``settings`` (setting
    keys) set: enough for ``active_terms()``, ``loss_terms``, phases and schedules."""
    t = cls.__new__(cls)
    t.num_epochs = epochs
    for k, v in settings.items():
        setattr(t, k, v)
    return t
