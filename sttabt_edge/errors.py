"""Exceptions users can catch (torch-free)."""


class SttabtError(Exception):
    """Base class for errors raised by sttabt-edge."""


class CheckpointMismatchError(SttabtError, ValueError):
    """A checkpoint does not match the model or config it is loaded into."""


class InputError(SttabtError, ValueError):
    """Model input is malformed (wrong image size, sequence too long, empty batch...)."""


class ExportError(SttabtError, RuntimeError):
    """Export failed or its verification exceeded tolerance."""


class UnsupportedModelError(SttabtError, ValueError):
    """The checkpoint's architecture is not one the STTABT method handles."""


class ModelNotFoundError(SttabtError, FileNotFoundError):
    """Neither an existing local path nor a hub id that can be fetched (the hub is unreachable offline)."""
