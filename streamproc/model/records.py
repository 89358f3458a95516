"""Field types shared by the decoders of streamproc's own Kafka records (tallies, actions).

Records on internal topics are input like any other: anyone who can write to
``streamproc.tallies`` or ``streamproc.actions`` (a mistaken tool, a bad replay) can put
anything there. Each record type is a dataclass whose fields carry these types, and
:func:`decoder` turns its JSON into an instance with strict types (a bool is not a count, a
string is not a number), bounds and Kubernetes naming rules, or a ValueError saying which field
is wrong, so a stage dead-letters it instead of crashing on it (again after every restart).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from streamproc.model import conventions

T = TypeVar("T")


def _check(test: Callable[[str], bool], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not test(value):
            raise ValueError(f"{value[:80]!r} is not {what}")
        return value

    return check


#: a namespace or topology name
Label = Annotated[str, AfterValidator(_check(conventions.is_dns1123_label, "a DNS-1123 label"))]
#: a cluster's name, or empty for a single-cluster deployment
OptionalLabel = Annotated[
    str,
    AfterValidator(_check(lambda v: not v or conventions.is_dns1123_label(v), "a DNS-1123 label")),
]
#: a workload or pod name
Subdomain = Annotated[
    str, AfterValidator(_check(conventions.is_dns1123_subdomain, "a DNS-1123 subdomain"))
]
#: a pod name, or empty when a record names none
OptionalSubdomain = Annotated[
    str,
    AfterValidator(
        _check(lambda v: not v or conventions.is_dns1123_subdomain(v), "a DNS-1123 subdomain")
    ),
]
#: milliseconds or seconds since the epoch, within what a 64-bit counter holds
Epoch = Annotated[int, Field(ge=0, le=2**62)]
Count = Annotated[int, Field(ge=1, le=2**62)]
#: Falco's priorities as ranks, Debug=0 ... Emergency=7
Priority = Annotated[int, Field(ge=0, le=7)]
Text = Annotated[str, Field(min_length=1, max_length=65_536)]
Uuids = Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=64)]


def decoder(cls: type[T]) -> Callable[[bytes], T]:
    """A function from JSON bytes to ``cls``, raising ValueError with the first wrong field."""
    adapter = TypeAdapter(cls)

    def decode(raw: bytes) -> T:
        try:
            return adapter.validate_json(raw, strict=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "record"
            raise ValueError(f"{where}: {error['msg']}") from None

    return decode
