"""One exception type for bad input, so the CLI can turn it into one clear line and exit code 2."""


class MMBenchError(Exception):
    """Bad input or usage: the message names the offending file, key or value."""


class DataError(MMBenchError):
    """A dataset file is missing, malformed or inconsistent."""


class ConfigError(MMBenchError):
    """An unknown or ill-typed configuration key, model or dataset name."""


class ModelImportError(MMBenchError):
    """A module of the model zoo failed to import (the message names it)."""
