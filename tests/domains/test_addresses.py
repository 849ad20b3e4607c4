"""The listening-address type every component's settings share."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from domains.addresses import BindAddress

ADDRESS: TypeAdapter[str] = TypeAdapter(BindAddress)


@pytest.mark.parametrize(
    ("value", "kept"),
    [("127.0.0.1", "127.0.0.1"), ("::", "::"), ("0:0::1", "::1"), ("api.example", "api.example")],
)
def test_addresses_and_host_names_are_kept(value: str, kept: str) -> None:
    """An IP address is kept in its normal form and a host name as given."""
    assert ADDRESS.validate_python(value) == kept


@pytest.mark.parametrize("value", ["", "a b", "-bad.host", "1.2.3.4:80", "x" * 254, "{x}"])
def test_anything_else_is_a_coded_error(value: str) -> None:
    """Anything else is refused with the code bad_bind_address and a message naming the fix."""
    with pytest.raises(ValidationError) as caught:
        ADDRESS.validate_python(value)
    error = caught.value.errors()[0]
    assert error["type"] == "bad_bind_address" and "127.0.0.1" in error["msg"]
