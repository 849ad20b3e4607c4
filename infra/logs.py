"""Structured logs: one JSON object per line, with identifiers masked.

Every long-running component (stream workers, the API, the stack launcher) logs through
``logging_config``: a line holds the time, level, logger, component, pid and message.
The message (and any traceback) passes ``mask_identifiers`` first: privmesh code never
logs a value, and the mask is the second line of defence against a library that does
(an e-mail address, phone number, payment card, IBAN, national id, IPv6 or routable IPv4
address in an exception message, for instance; the detectors of ``domains.pii_patterns``).
Tokens (``k1.…``) are pseudonymous and are kept. Names cannot be recognised by a pattern:
privmesh code never puts a value or an unknown field's name in a message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

from domains.pii_patterns import mask as mask_personal

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|/\d)")
MASKED_EMAIL = "<email>"
MASKED_IP = "<ipv4>"


def _mask_ip(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        address = ipaddress.IPv4Address(text)
    except ipaddress.AddressValueError:
        return text  # not an address (e.g. a version number like 999.1.2.3)
    # Loopback and unspecified addresses are this host's own endpoints, not a person's.
    return text if address.is_loopback or address.is_unspecified else MASKED_IP


def mask_identifiers(text: str) -> str:
    """``text`` with e-mail addresses, phone, card, IBAN and national id numbers, IPv6 and
    routable IPv4 addresses replaced."""
    return IPV4.sub(_mask_ip, mask_personal(EMAIL.sub(MASKED_EMAIL, text)))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; message and traceback masked."""

    def __init__(self, component: str = "privmesh") -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "pid": record.process,
            "msg": mask_identifiers(record.getMessage()),
        }
        if record.exc_info:
            line["exc"] = mask_identifiers(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def logging_config(component: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` sending every logger's records to stdout as JSON
    (Python warnings too, from now on)."""
    logging.captureWarnings(True)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "component": component}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # uvicorn's loggers have handlers of their own by default: route them here.
        "loggers": {
            name: {"handlers": ["default"], "level": level, "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(component: str, level: str = "INFO") -> dict[str, Any]:
    """Apply ``logging_config`` to this process now (before heavy imports, so their
    import-time warnings become JSON lines too); returns the config for Faust or uvicorn."""
    config = logging_config(component, level)
    logging.config.dictConfig(config)
    return config
