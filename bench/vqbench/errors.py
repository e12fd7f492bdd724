"""The exception hierarchy: every user-facing failure derives from VqbenchError.

The CLI catches VqbenchError only, prints its message on one line and exits with the error's
``exit_code``. Any other exception is a bug and keeps its traceback.
"""


class VqbenchError(Exception):
    """Root of the errors that a user can fix (bad input, missing data, unavailable hardware)."""

    exit_code = 2


class ScenarioError(VqbenchError):
    """A scenario file is missing, malformed or names something that does not exist."""


class DataError(VqbenchError):
    """A data set, image, pairs file or download is missing or does not verify."""


class ModelError(VqbenchError):
    """A model file is missing, does not match its card, or cannot be parsed."""


class MeterError(VqbenchError):
    """An energy meter cannot be read. A meter raises this instead of reporting 0 J."""


class PayloadError(VqbenchError):
    """A payload's header, length or content does not fit the model that must decode it."""


class RunError(VqbenchError):
    """A run failed after it started measuring; results already measured are kept."""

    exit_code = 1
