"""Exceptions users can catch (torch-free)."""


class SttabtError(Exception):
    """Base class for errors raised by sttabt-edge."""


class CheckpointMismatchError(SttabtError, ValueError):
    """A checkpoint does not match the model or config it is loaded into."""


class InputError(SttabtError, ValueError):
    """Model input is malformed (wrong image size, sequence too long, empty batch...)."""


class ExportError(SttabtError, RuntimeError):
    """Export failed or its verification exceeded tolerance."""
