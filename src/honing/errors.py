"""Errors a user can act on. Each message says where and what."""


class HoningError(Exception):
    """Base class: the CLI prints these as one clear line, without a traceback."""


class ModelError(HoningError):
    """A model reference that cannot be resolved or loaded (missing, corrupt, unsupported)."""


class DataError(HoningError):
    """A dataset that cannot be read at all (as opposed to per-line validation problems)."""


class ConfigError(HoningError):
    """A configuration key or value that is unknown or invalid."""
