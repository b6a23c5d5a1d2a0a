"""The one tag normaliser and the parser for what models really answer.

Ground truth and predictions go through the same `normalise_tags`, so a metric never
counts "Cat " and "cat" as different tags.
"""
from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Iterable, NamedTuple

_SPACES = re.compile(r"\s+")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
"""Zero-width and formatting characters (soft hyphen, ZWSP/ZWJ/ZWNJ, direction marks, word joiner, BOM): invisible
in a keyword list, yet they make two tags that look the same differ."""
_QUOTES = "\"'`\u00ab\u00bb\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u2039\u203a\u300c\u300d\u300e\u300f"
"""Quote marks of any script: « » ‹ › “ ” „ ‘ ’ 「 」 and the ASCII ones."""
MAX_TAG_CHARS = 64
"""A tag longer than this is shortened (at a word boundary where there is one), never dropped: dropping one
would shrink a photo's ground truth without a word."""
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_STRIP = " \t\r\n.,;:!?()[]{}#*-•" + _QUOTES
# XML 1.0 allows tab, newline, CR, U+0020-U+D7FF, U+E000-U+FFFD and U+10000 up; one other character
# in a keyword makes the XMP sidecar it lands in ill-formed.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 forbids (C0 controls but tab/newline/CR, lone surrogates, U+FFFE/FFFF)."""
    return _XML_FORBIDDEN.sub("", text)


_REFUSAL = re.compile(
    r"^\W*(?:sorry|unfortunately,?\s+i\b|as\s+an\s+ai\b|i\s+apologi[sz]e"
    r"|i(?:\s*['’]?\s*m|\s+am)\s+(?:sorry|not\s+able|unable)"
    r"|i\s+(?:can\s*not|can['’]?t|won['’]?t|will\s+not))",
    re.IGNORECASE,
)


def normalise_tag(tag: Any) -> str:
    """Drop characters XML forbids and invisible ones, fold case and compatibility forms (NFKC casefold: "Straße"
    = "STRASSE", "Ｃａｔ" = "cat"), collapse inner white space, trim quotes and punctuation, shorten past MAX_TAG_CHARS."""
    text = _INVISIBLE.sub("", xml_safe(str(tag)))
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = _SPACES.sub(" ", text.replace("_", " ")).strip(_STRIP)
    return shorten(text)


def shorten(text: str, limit: int = MAX_TAG_CHARS) -> str:
    """`text` cut to `limit` characters, at the last space within them when there is one."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut[:limit].strip(_STRIP)


def normalise_tags(tags: Iterable[Any]) -> list[str]:
    """Normalise each tag, drop empties, keep first-seen order without duplicates."""
    seen: dict[str, None] = {}
    for tag in tags or ():
        norm = normalise_tag(tag)
        if norm:
            seen.setdefault(norm, None)
    return list(seen)


class ParsedTags(NamedTuple):
    tags: list[str]
    valid: bool  # the answer was exactly the requested {"tags": [...]} JSON (fences allowed)
    error: str | None  # when no tag list was found: "refused", "truncated" (JSON left open) or "unparseable"


def _tags_from_json(value: Any) -> list[str] | None:
    if isinstance(value, dict):
        for key in ("tags", "Tags", "TAGS", "keywords", "labels"):
            if isinstance(value.get(key), list):
                return [t for t in value[key] if isinstance(t, (str, int, float))]
        return None
    if isinstance(value, list) and all(isinstance(t, (str, int, float)) for t in value):
        return list(value)
    return None


def _json_candidates(text: str) -> Iterable[str]:
    """The fenced blocks first, then every balanced {...} or [...] span in the text."""
    yield from (m.group(1) for m in _FENCE.finditer(text))
    for opener, closer in ("{}", "[]"):
        start = text.find(opener)
        while start != -1:
            depth = 0
            for end in range(start, len(text)):
                if text[end] == opener:
                    depth += 1
                elif text[end] == closer:
                    depth -= 1
                    if depth == 0:
                        yield text[start : end + 1]
                        break
            start = text.find(opener, start + 1)


def parse_tags(text: str | None) -> ParsedTags:
    """Find the tag list in a model's answer.

    Accepts `{"tags": [...]}` (valid), and, marked not valid, the same inside prose, a bare
    JSON list, other key names, or a comma/newline separated list as the last resort. An answer
    without a JSON tag list that opens with a refusal ("Sorry, I can't.") is `refused`, and one
    whose JSON never closes (cut off) is `truncated`: neither is read as a list of words.
    """
    text = (text or "").strip()
    if not text:
        return ParsedTags([], False, "unparseable")
    stripped = _FENCE.sub(lambda m: m.group(1), text).strip()
    try:
        whole = json.loads(stripped)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("tags"), list):
        return ParsedTags(normalise_tags(_tags_from_json(whole) or []), True, None)
    found = _tags_from_json(whole) if whole is not None else None
    if found is None:
        for candidate in _json_candidates(text):
            try:
                found = _tags_from_json(json.loads(candidate))
            except ValueError:
                continue
            if found is not None:
                break
    if found is None:
        if _REFUSAL.match(text):
            return ParsedTags([], False, "refused")
        if _left_open(text):
            return ParsedTags([], False, "truncated")
        found = _loose_list(text)
    if not found:
        return ParsedTags([], False, "unparseable")
    return ParsedTags(normalise_tags(found), False, None)


def _left_open(text: str) -> bool:
    """Whether the JSON that starts at the first { or [ of `text` is cut off (a string or bracket never closed)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return False
    depth, in_string, escaped = 0, False, False
    for char in text[min(starts) :]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True


def _loose_list(text: str) -> list[str]:
    """'cat, dog, tree' or a bulleted list: short items only, prose is not a tag list."""
    body = text.split(":", 1)[1] if ":" in text.splitlines()[0] else text
    items = [i for i in re.split(r"[,\n;]", body) if i.strip()]
    if len(items) < 2 or any(len(i.split()) > 4 for i in items):
        return []
    return items
