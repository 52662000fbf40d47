"""CloudEvents 1.0 requests checked before KServe reads them: 400 naming the attribute.

Binary mode carries the attributes as ``ce-*`` headers, structured mode as the members of an
``application/cloudevents+json`` body. Required: ``specversion`` (``1.0``), ``id``, ``source``
(a URI reference), ``type``; optional ``time`` must be RFC 3339. ``type`` may be restricted to the
types a component answers. A structured event without ``time`` (optional in CloudEvents, required
by KServe's unwrapping) is unwrapped here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from serving.contract import short
from serving.errors import ClientError

REQUIRED = ("specversion", "id", "source", "type")
MAX_ATTRIBUTE = 512


def is_binary(headers: Mapping[str, str]) -> bool:
    return any(k.startswith("ce-") for k in headers)


def is_structured(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/cloudevents+json"


def check_binary(headers: Mapping[str, str], types: Sequence[str] | None = None) -> None:
    """The ``ce-*`` headers of a binary-mode event."""
    check({k[3:]: v for k, v in headers.items() if k.startswith("ce-")}, "header ce-", types)


def check_structured(doc: Any, types: Sequence[str] | None = None) -> dict[str, Any]:
    """A structured-mode event (the decoded JSON); returns it."""
    if not isinstance(doc, dict):
        raise ClientError(f"a structured CloudEvent must be a JSON object, got {type(doc).__name__}")
    check(doc, "CloudEvent attribute ", types)
    if "data" not in doc and "data_base64" not in doc:
        raise ClientError("CloudEvent has no data (the forecast request)")
    return doc


def check(attributes: Mapping[str, Any], prefix: str, types: Sequence[str] | None) -> None:
    for name in REQUIRED:
        value = attributes.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ClientError(f"{prefix}{name} is required (CloudEvents 1.0: specversion, id, source, type)")
        if len(value) > MAX_ATTRIBUTE or not value.isprintable():
            raise ClientError(f"{prefix}{name}: {short(value)} is not a printable value of at most "
                              f"{MAX_ATTRIBUTE} characters")
    if attributes["specversion"] != "1.0":
        raise ClientError(f"{prefix}specversion must be 1.0, got {short(attributes['specversion'])}")
    if any(c.isspace() for c in attributes["source"]):
        raise ClientError(f"{prefix}source must be a URI reference, got {short(attributes['source'])}")
    if types and attributes["type"] not in types:
        raise ClientError(f"{prefix}type {short(attributes['type'])} is not answered here; "
                          f"send {', '.join(types)}")
    time = attributes.get("time")
    if time is not None and not _rfc3339(time):
        raise ClientError(f"{prefix}time must be an RFC 3339 timestamp like 2015-08-01T00:00:00Z, got {short(time)}")


def _rfc3339(value: Any) -> bool:
    if not isinstance(value, str) or not 20 <= len(value) <= 40 or value[10] not in "Tt":
        return False
    try:
        stamp = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return stamp.tzinfo is not None
