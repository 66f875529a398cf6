"""Exceptions users can catch (torch-free)."""


class SttabtError(Exception):
    """Base class for errors raised by sttabt-edge."""


class CheckpointMismatchError(SttabtError, ValueError):
    """A checkpoint does not match the model or config it is loaded into."""


class InputError(SttabtError, ValueError):
    """Model input is malformed (wrong image size, sequence too long, empty batch...)."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input file (an image) does not exist; still a FileNotFoundError for callers that catch that."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong kind (a number where an image path or a text belongs); still a TypeError."""


class ModelFileError(InputError):
    """The model file is missing, corrupt, tampered with, or was not written by sttabt-edge."""


class InferenceError(SttabtError, RuntimeError):
    """The inference engine failed on inputs that passed the runtime's checks."""


class ExportError(SttabtError, RuntimeError):
    """Export failed or its verification exceeded tolerance."""


class UnsupportedModelError(SttabtError, ValueError):
    """The checkpoint's architecture is not one the STTABT method handles."""


class ModelNotFoundError(SttabtError, FileNotFoundError):
    """Neither an existing local path nor a hub id that can be fetched (the hub is unreachable offline)."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: third-party errors (torch's unpickler,
    safetensors, onnxruntime) carry paragraphs that must not reach a CLI user as a wall of text."""
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
