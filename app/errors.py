"""The errors callers catch, importable without torch (the server maps them to answers)."""

QUOTE_LIMIT = 60


def quoted(value, limit: int = QUOTE_LIMIT) -> str:
    """A caller's value as a message quotes it: repr, cut to ``limit`` characters (a 1 MB string or a
    400-digit number is not echoed back whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text)} characters)"


class TryOnInputError(ValueError):
    """A try-on argument is unusable; the message quotes the value and the fix."""


class AdapterError(ValueError):
    """The CatVTON attention file is missing, unreadable or does not fit the UNet."""


class GenerationCancelled(Exception):
    """Raise from a step callback to stop a generation between steps. A batch that stops puts the results it
    had already saved in ``finished``."""

    finished: list = []


class RunTimedOut(GenerationCancelled):
    """A try-on ran past TRYON_MAX_RUN_S and was stopped between steps."""


class BusyError(RuntimeError):
    """Too many try-ons are already waiting (all callers, or this one); retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class CounterUnavailable(RuntimeError):
    """The quota or sign-in counts on the volume cannot be read or written just now (an I/O error, too many open
    files): this request is refused (503) rather than counted from zero; the next one uses the files again."""


class DeviceError(RuntimeError):
    """The configured device or dtype cannot be used on this machine."""


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do. The next call retries."""


class ParserUnavailable(ModelLoadError):
    """The human parser's weights are not on the volume: auto masks are off, drawing still works."""


class ApiError(Exception):
    """An answer of the REST API other than success: HTTP status, a stable code, and the message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    """The one error shape of the whole API."""
    return {"error": {"code": code, "message": message}}
