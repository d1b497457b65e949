"""Errors a user can cause. Each message names the file or key and what is wrong."""


class SegfungiError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(SegfungiError):
    """A config file or command-line override is invalid."""


class DatasetError(SegfungiError):
    """A dataset folder, split file, image or mask is missing or broken."""


class CheckpointError(SegfungiError):
    """A checkpoint is missing, unsafe, or made for another architecture."""


class BankError(SegfungiError):
    """A memory bank is incomplete, corrupt, locked, or incompatible with the query."""


class InstallError(SegfungiError):
    """The installed packages do not work together (e.g. torch and torchvision)."""
