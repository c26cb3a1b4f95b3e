"""One exception type for bad input, so the CLI can turn it into one clear line and exit code 2."""


class MMBenchError(Exception):
    """Bad input or usage: the message names the offending file, key or value."""


class DataError(MMBenchError):
    """A dataset file is missing, malformed or inconsistent."""


class ConfigError(MMBenchError):
    """An unknown or ill-typed configuration key, model or dataset name."""


class ModelImportError(MMBenchError):
    """A module of the model zoo failed to import (the message names it)."""


class DiskFullError(MMBenchError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT): a condition of the machine, not a bug
    of a model, so `mmbench run` stops with one line naming the file instead of failing run by run."""

    def __init__(self, path, reason: str, note: str):
        super().__init__(f"{path}: {reason} ({note})")
        self.path, self.reason, self.note = path, reason, note

    def __reduce__(self):  # picklable (e.g. from a worker process) despite its three arguments
        return (type(self), (self.path, self.reason, self.note))
