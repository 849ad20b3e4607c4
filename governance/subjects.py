"""A data subject as a request names it: the raw value of a privacy unit (an e-mail, a
visitor id, a tail number), checked before any domain derives tokens from it."""

from __future__ import annotations

MAX_SUBJECT_CHARS = 1_024  # longer than any privacy-unit value (e-mail <= 254, ids, tails)


def check_subject(subject: str) -> None:
    """Refuse a subject no domain could hold: empty, holding NUL, longer than
    ``MAX_SUBJECT_CHARS``, or text UTF-8 cannot encode (a lone surrogate, as a non-UTF-8
    argument gives). Raises ``ValueError``; the message never quotes the subject."""
    if not subject.strip():
        raise ValueError("the subject is empty: give the raw privacy-unit value")
    if "\x00" in subject:
        raise ValueError("the subject holds a NUL character")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise ValueError(
            f"the subject is {len(subject)} characters long; a privacy-unit value has at "
            f"most {MAX_SUBJECT_CHARS}"
        )
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the subject holds text UTF-8 cannot encode (not UTF-8 input)") from None
