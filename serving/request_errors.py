"""A failed request as the dev server answers it, and the text its messages may quote.

REST answers `RequestError.status` with {"error": message}; gRPC aborts with the status code
TF Serving uses for that HTTP status (grpc_service).
"""

from __future__ import annotations

from .client import error_line

# Names and other client-chosen text echoed in an error are cut to this many characters, so
# a 100 kB model name cannot push the answer (gRPC: its status metadata) over a limit.
MAX_ECHOED_CHARS = 200


class RequestError(Exception):
    """A failed request: HTTP status and the message for {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> RequestError:
    """A 400: the request breaks a rule (TF Serving's InvalidArgument)."""
    return RequestError(400, message)


def echo(text: str) -> str:
    """Client-chosen text as an error message quotes it: cut to MAX_ECHOED_CHARS, with lone
    surrogates escaped (they cannot be encoded as UTF-8 for the answer)."""
    shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(shown) > MAX_ECHOED_CHARS:
        shown = f"{shown[:MAX_ECHOED_CHARS]}... ({len(text)} characters)"
    return shown


def utf8(text: str, what: str) -> str:
    """`text` when it is valid Unicode (JSON can carry lone surrogates, \\ud800, which no
    UTF-8 string holds: TF's string tensors and protobuf's keys need UTF-8); a 400 otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        shown = text[error.start].encode("utf-8", "backslashreplace").decode("ascii")
        raise bad(f"{what} is not valid Unicode: {error.reason} ({shown} at character "
                  f"{error.start})") from None
    return text


def first_line(error: BaseException) -> str:
    """The line of an exception's message that explains it (`client.error_line`)."""
    return error_line(getattr(error, "message", None) or str(error) or type(error).__name__)
