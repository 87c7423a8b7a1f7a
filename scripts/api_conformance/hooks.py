"""schemathesis hooks for scripts/api-conformance (loaded through SCHEMATHESIS_HOOKS).

One filter, judged by contrib/openapi.json itself: a request schemathesis labels *valid*
whose header breaks that header's documented `pattern` is not a valid request, so it is
not sent. schemathesis 4.32's coverage phase produces such requests for an optional
`If-None-Match` with a `pattern`: it fills the header with `0` (a value `If-Match`'s
pattern admits, as a bare version) and labels the request valid, although the write
routes' `If-None-Match` pattern refuses bare numbers (the daemon answers 400, as
documented). Invalid requests are untouched: they still go out and must be refused.
"""

from __future__ import annotations

import json
import pathlib
import re

import schemathesis
from schemathesis import GenerationMode

_DOCUMENT = pathlib.Path(__file__).resolve().parents[2] / "contrib" / "openapi.json"


def _header_patterns() -> dict[tuple[str, str], list[tuple[str, re.Pattern[str]]]]:
    """(METHOD, path template) → [(header name, compiled pattern)] from the document."""
    doc = json.loads(_DOCUMENT.read_text(encoding="utf-8"))

    def deref(node: dict) -> dict:
        ref = node.get("$ref")
        if ref is None:
            return node
        target = doc
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        return target

    out: dict[tuple[str, str], list[tuple[str, re.Pattern[str]]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in map(deref, op.get("parameters", [])):
                pattern = param.get("schema", {}).get("pattern")
                if param.get("in") == "header" and pattern:
                    out.setdefault((method.upper(), path), []).append((param["name"], re.compile(pattern)))
    return out


_PATTERNS = _header_patterns()


@schemathesis.hook
def filter_case(context, case) -> bool:
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return True
    headers = {name.lower(): value for name, value in (case.headers or {}).items()}
    for name, pattern in _PATTERNS.get((case.method.upper(), case.path), []):
        value = headers.get(name.lower())
        if isinstance(value, str) and not pattern.search(value):
            return False
    return True
