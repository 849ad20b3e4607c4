"""Parsing the erasure requests processors read from ``<domain>.erasures`` (no broker)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.contract import FieldType
from streams.erasure import MAX_TOKENS_PER_REQUEST, MalformedErasureRequest, parse_erasure_request
from streams.keys import derive_domain_key
from streams.pseudonymise import Tokeniser

TOKENS = Tokeniser(derive_domain_key(b"m" * 32, "support", 1), 1)
SECRET = "grace.hopper@example.org"
TOKEN = TOKENS.token(SECRET, FieldType.EMAIL)
OTHER = TOKENS.token("ada.lovelace@example.org", FieldType.EMAIL)


def error_of(raw: bytes | None) -> str:
    """The message of the MalformedErasureRequest that ``raw`` raises."""
    with pytest.raises(MalformedErasureRequest) as caught:
        parse_erasure_request(raw)
    return str(caught.value)


def assert_not_echoed(message: str, raw: bytes | None) -> None:
    """The error names the problem, never the payload or the identifier in it."""
    assert SECRET not in message and "grace" not in message.lower()
    text = (raw or b"").decode(errors="ignore")
    if len(text) >= 8:
        assert text not in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"{not json " + SECRET.encode(),
        b'{"tokens": ["' + SECRET.encode() + b'"',
        b"\xff\xfe" + SECRET.encode(),
        SECRET.encode(),
    ],
    ids=["none", "empty", "broken", "truncated", "not-utf8", "bare-email"],
)
def test_malformed_json_is_refused(raw: bytes | None) -> None:
    """A request that is not UTF-8 JSON is refused without echoing it."""
    assert_not_echoed(error_of(raw), raw)


@pytest.mark.parametrize(
    "request_",
    [[TOKEN, SECRET], f"{SECRET}", 42, None, True, [{"tokens": [TOKEN]}]],
    ids=["list", "string", "number", "null", "bool", "nested-list"],
)
def test_non_object_is_refused(request_: object) -> None:
    """A JSON value that is not an object is refused without echoing it."""
    raw = json.dumps(request_).encode()
    assert_not_echoed(error_of(raw), raw)


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"subject": SECRET},
        {"token": [TOKEN], "email": SECRET},
        {"tokens": []},
        {"tokens": None, "email": SECRET},
        {"tokens": TOKEN},
        {"tokens": SECRET},
        {"tokens": {"k": TOKEN}},
    ],
    ids=["empty", "subject", "misspelt", "empty-list", "null", "one-string", "email", "object"],
)
def test_missing_or_empty_tokens_are_refused(request_: dict[str, object]) -> None:
    """A request without a non-empty list 'tokens' is refused without echoing it."""
    raw = json.dumps(request_).encode()
    assert_not_echoed(error_of(raw), raw)


@pytest.mark.parametrize(
    "tokens",
    [
        [SECRET],
        [TOKEN, SECRET],
        [" " + TOKEN],
        [TOKEN.upper()],
        ["k1.short"],
        ["k1." + "a" * 65],
        ["k1000." + "a" * 26],
        [TOKEN.replace("k1.", "v1.")],
        [TOKEN + "\n"],
        [1, TOKEN],
        [None],
        [[TOKEN]],
        [""],
    ],
    ids=[
        "email",
        "token-and-email",
        "leading-space",
        "upper-case",
        "too-short",
        "too-long",
        "version-too-long",
        "wrong-prefix",
        "trailing-newline",
        "number",
        "null",
        "nested",
        "empty-string",
    ],
)
def test_values_that_are_not_tokens_are_refused(tokens: list[object]) -> None:
    """Any value in 'tokens' that is not a privmesh token refuses the whole request, and the
    error does not repeat the offending value."""
    raw = json.dumps({"tokens": tokens}).encode()
    message = error_of(raw)
    assert_not_echoed(message, raw)
    for value in tokens:
        if isinstance(value, str) and len(value.strip()) >= 8:
            assert value.strip() not in message


def test_too_many_tokens_are_refused() -> None:
    """A request naming more than MAX_TOKENS_PER_REQUEST tokens is refused, naming none."""
    many = [TOKENS.token(f"user{i}@example.org", FieldType.EMAIL) for i in range(10_001)]
    assert len(set(many)) > MAX_TOKENS_PER_REQUEST
    raw = json.dumps({"tokens": many}).encode()
    message = error_of(raw)
    assert_not_echoed(message, raw)
    assert not any(t in message for t in many[:100])
    ok = json.dumps({"tokens": many[:MAX_TOKENS_PER_REQUEST]}).encode()
    assert len(parse_erasure_request(ok)) == MAX_TOKENS_PER_REQUEST


def test_valid_request_names_its_tokens() -> None:
    """A valid request gives its set of tokens; duplicates collapse, other fields are ignored."""
    raw = json.dumps({"erasure_id": "support-1-2", "tokens": [TOKEN, OTHER, TOKEN]}).encode()
    assert parse_erasure_request(raw) == {TOKEN, OTHER}
    assert parse_erasure_request(json.dumps({"tokens": [TOKEN]}).encode()) == {TOKEN}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet="QZXJ@.k1", max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.just("tokens"), inner),
    max_leaves=6,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(request_=json_values | st.dictionaries(st.sampled_from(["tokens", "x"]), json_values))
def test_arbitrary_requests_give_tokens_or_a_clean_error(request_: object) -> None:
    """Any JSON value gives either a set of well-formed tokens or MalformedErasureRequest,
    whose message contains none of the request's strings."""
    raw = json.dumps(request_).encode()
    try:
        tokens = parse_erasure_request(raw)
    except MalformedErasureRequest as exc:
        message = str(exc)
        # No message has an upper-case Q, Z or X: such a string in one is an echo.
        strings = [s for s in _strings(request_) if len(s) >= 3 and any(c in s for c in "QZX")]
        assert not any(s in message for s in strings)
    else:
        assert tokens and all(t.startswith("k") and "." in t for t in tokens)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    """Arbitrary bytes never raise anything but MalformedErasureRequest."""
    with contextlib.suppress(MalformedErasureRequest):
        parse_erasure_request(raw)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    return []
