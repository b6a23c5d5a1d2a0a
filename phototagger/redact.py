"""The one scrubber for text that comes back from a service we sent a key to.

A server may echo the key it received (in an error message, in a header it quotes, in the model's
answer itself), whole or partly encoded. Every such text goes through `scrub` before it is parsed,
stored, cached, logged or printed. The keys are the ones this process holds: the values of the
environment variables that carry keys (`SECRET_ENVS`, and any variable whose name says it holds a
key, token, secret or password), plus the keys a caller passes in. Values shorter than
`MIN_SECRET_LEN` are left alone: masking every "false" or "1" would garble text and hide nothing.
"""
from __future__ import annotations

import base64
import functools
import os
import re
from typing import Iterable

MASK = "***"
MIN_SECRET_LEN = 8
SECRET_ENVS = ("openai_api", "togetherai_api", "client_id", "OPENAI_COMPATIBLE_API_KEY")
_SECRET_NAME = re.compile(r"(^|_)(api|api_?key|key|token|secret|password|passwd)$", re.IGNORECASE)


def env_secrets() -> list[str]:
    """The values of the key-carrying environment variables, long enough to be worth masking."""
    names = set(SECRET_ENVS) | {name for name in os.environ if _SECRET_NAME.search(name)}
    return [value for value in (os.environ.get(name, "").strip() for name in sorted(names)) if len(value) >= MIN_SECRET_LEN]


def scrub(text: str, keys: Iterable[str] = ()) -> str:
    """`text` with every known key, and its escaped or base64 forms, replaced by `MASK`."""
    if not text:
        return text
    secrets = tuple(sorted({k for k in (*keys, *env_secrets()) if k and len(k) >= MIN_SECRET_LEN}, key=lambda k: (-len(k), k)))
    for pattern in _patterns(secrets):
        text = pattern.sub(MASK, text)
    return text


@functools.lru_cache(maxsize=32)
def _patterns(secrets: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    if not secrets:
        return ()
    spelled = re.compile("|".join(_spelled(s) for s in secrets), re.IGNORECASE)
    encoded = sorted({form for s in secrets for form in _base64_forms(s)}, key=lambda f: (-len(f), f))
    return (spelled, re.compile("|".join(map(re.escape, encoded)))) if encoded else (spelled,)


def _spelled(secret: str) -> str:
    """A regex for the key with any of its characters written as itself or as an escape.

    Covers what a server echoing a key may send: JSON `\\u0073`, URL `%73`, HTML `&#115;` or
    `&#x73;`, Python `\\x73`, mixed freely within one key; letter case is ignored too (a tag
    normaliser lower-cases what it keeps).
    """
    def char(c: str) -> str:
        code = ord(c)
        forms = [re.escape(c), rf"\\u{code:04x}", rf"&#0*{code};", rf"&#x0*{code:x};"]
        if code < 0x100:
            forms += [rf"%{code:02x}", rf"\\x{code:02x}"]
        if c in "\"\\/":
            forms.append(re.escape("\\" + c))  # JSON's own escapes
        if c == "_":
            forms.append(" ")  # the tag normaliser turns "_" into a space
        return "(?:" + "|".join(forms) + ")"

    return "".join(char(c) for c in secret)


def _base64_forms(secret: str) -> set[str]:
    """The parts of a base64 text (standard or URL-safe) that spell the key, at each of the 3 byte offsets.

    Only the 4-character groups made of key bytes alone are fixed whatever surrounds the key,
    so a key inside a longer encoded text (a Basic auth header, a data URI) is found too.
    """
    forms = set()
    raw = secret.encode()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        first = 4 if offset else 0
        last = (offset + len(raw)) // 3 * 4
        stable = encoded[first:last]
        if len(stable) >= MIN_SECRET_LEN:
            forms.add(stable)
            forms.add(stable.replace("+", "-").replace("/", "_"))
    return forms
