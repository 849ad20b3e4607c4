"""Listening addresses every server component accepts in its settings.

Why here: the API, the stream workers and the broker launcher all bind a socket from a
setting, and each must refuse the same bad values with the same code; ``domains`` is
the one package they all read.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# A DNS host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def checked_bind_address(value: str) -> str:
    """``value`` if it is an IP address or a host name (at most 253 characters), else a
    ``bad_bind_address`` validation error."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) <= 253 and _HOSTNAME.fullmatch(value):
        return value
    message = (
        f"bind address {value[:40]!r} is neither an IP address nor a host name "
        "(use 127.0.0.1 for this machine only, 0.0.0.0 or :: for every interface)"
    )
    raise PydanticCustomError("bad_bind_address", message.replace("{", "{{").replace("}", "}}"))


# A listening address setting: an IP address or a host name (``bad_bind_address``).
BindAddress = Annotated[str, AfterValidator(checked_bind_address)]
