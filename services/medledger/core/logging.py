"""Structured logging for every medledger process, with PHI and secrets scrubbed from each event.

``configure_logging`` routes structlog and the standard library (grpc, nats, …) through
one chain whose last step before rendering is ``scrub_phi``: keys that name personal data
or free text are redacted, ``Sensitive`` values are redacted, and bearer tokens, JWTs and
PEM private keys are cut out of every string.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import IO, Any, Generic, TypeVar

import structlog
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import BaseModel

REDACTED = "[REDACTED]"

T = TypeVar("T")


class Sensitive(Generic[T]):
    """A value that must never be logged; logs show ``[REDACTED]`` in its place.

    ``log.info("lookup", patient=Sensitive(name))`` keeps the field's presence visible
    without its content. ``.value`` gives the wrapped value back to code that needs it.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Sensitive({REDACTED})"

    __str__ = __repr__


# Keys compared after lower-casing and removing separators, so "givenName",
# "given_name" and "given-name" are the same key.
_SENSITIVE_KEYS = {
    "name",
    "given",
    "family",
    "mrn",
    "dob",
    "ssn",
    "birthdate",
    "dateofbirth",
    "birthday",
    "address",
    "phone",
    "telephone",
    "email",
    "note",
    "notes",
    "text",
    "narrative",
    "justification",
    "description",
    "comment",
    "comments",
    "password",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "cookie",
    "privatekey",
    "apikey",
}
# A key holding any of these words as a whole word ("home_address",
# "patient_mrn", "break_glass_justification", "access_token") is sensitive too.
_SENSITIVE_WORDS = {
    "mrn",
    "dob",
    "ssn",
    "address",
    "phone",
    "telephone",
    "email",
    "note",
    "notes",
    "text",
    "narrative",
    "justification",
    "description",
    "comment",
    "comments",
    "password",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "cookie",
}
_SENSITIVE_SUFFIXES = (
    "patientname",
    "givenname",
    "familyname",
    "firstname",
    "lastname",
    "middlename",
    "maidenname",
    "fullname",
    "displayname",
    "birthdate",
    "dateofbirth",
    "privatekey",
)
_marked_keys: set[str] = set()
_marked_lock = threading.Lock()

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_CAMEL_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_PASSTHROUGH_KEYS = {"event", "level", "timestamp", "logger", "exception", "stack"}
_MAX_DEPTH = 12


def mark_sensitive(*keys: str) -> None:
    """Add service-specific keys (e.g. ``"insurance_member_id"``) to the redacted set."""
    with _marked_lock:
        _marked_keys.update(_compact(key) for key in keys)


def is_sensitive_key(key: str) -> bool:
    """True when a field of this name may hold PHI or a secret and must not be logged."""
    compact = _compact(key)
    if compact in _SENSITIVE_KEYS or compact in _marked_keys:
        return True
    if compact.endswith(_SENSITIVE_SUFFIXES):
        return True
    words = _WORD_SPLIT.split(_CAMEL_BOUNDARY.sub(r"\1_\2", key).lower())
    return any(word in _SENSITIVE_WORDS for word in words)


def redact_text(text: str) -> str:
    """Cut bearer tokens, JWTs and PEM private keys out of free text."""
    text = _PEM_PRIVATE_KEY.sub(REDACTED, text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _JWT.sub(REDACTED, text)


def scrub(value: Any, *, _depth: int = 0) -> Any:
    """A copy of ``value`` safe to log: sensitive keys and values redacted, recursively.

    Protobuf messages, dataclasses and pydantic models are turned into dicts first, so
    a request logged whole is scrubbed field by field; bytes are logged by size only.
    """
    if _depth > _MAX_DEPTH:
        return "[TOO DEEP]"
    if isinstance(value, Sensitive):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Message):
        return scrub(MessageToDict(value, preserving_proto_field_name=True), _depth=_depth + 1)
    if isinstance(value, BaseModel):
        return scrub(value.model_dump(mode="json"), _depth=_depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return scrub(fields, _depth=_depth + 1)
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if is_sensitive_key(str(key)) else scrub(item, _depth=_depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(item, _depth=_depth + 1) for item in value]
    return redact_text(repr(value))


def scrub_phi(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the last step before rendering, for native and stdlib events."""
    for key, value in list(event_dict.items()):
        if key in _PASSTHROUGH_KEYS:
            event_dict[key] = redact_text(value) if isinstance(value, str) else scrub(value)
        elif is_sensitive_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = scrub(value)
    return event_dict


class _MedledgerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs, so a second call can replace it."""


def configure_logging(
    level: str = "INFO",
    fmt: str = "json",
    *,
    stream: IO[str] | None = None,
) -> None:
    """Send every log line, structlog's and the standard library's, through the scrubbing chain.

    Safe to call again (tests do): the previous medledger handler is replaced.
    """
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    foreign_pre_chain: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub_phi,
            renderer,
        ],
    )
    handler = _MedledgerHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _MedledgerHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's and nats' own debug chatter is noise unless we are debugging ourselves.
    library_level = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for library in ("grpc", "nats", "asyncio", "urllib3"):
        logging.getLogger(library).setLevel(max(library_level, root.level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structured logger named after its module, with optional bound fields."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**initial) if initial else logger


def sensitive_keys() -> Iterable[str]:
    """The keys marked sensitive at run time (for documentation and tests)."""
    with _marked_lock:
        return sorted(_marked_keys)


def _compact(key: str) -> str:
    return _WORD_SPLIT.sub("", key.lower())
