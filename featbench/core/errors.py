"""featbench's exceptions. The CLI prints these as one clear message, without a traceback."""


class FeatbenchError(Exception):
    """Base class of every error featbench raises on purpose."""


class UnknownNameError(FeatbenchError, KeyError):
    """A registry lookup (backbone, manipulation, suite, asset, task) found no such name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AssetError(FeatbenchError):
    """A pinned asset (weights file) is missing, unreachable or does not match its hash."""


class DataError(FeatbenchError):
    """Images or cached task data do not match what the suite pins (missing, corrupt, tampered)."""
