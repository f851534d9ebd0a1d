"""Secrets never leave in text: credentials in URLs (`http://user:secret@host`) and key-like
query parameters are masked in every log line, error message and manifest."""

from __future__ import annotations

import logging
import re
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_KEY_PARAM = re.compile(r"(?i)(?P<name>[?&](?:api[_-]?key|apikey|token|access[_-]?token|password|secret)=)[^&\s'\"]+")
MASK = "***"


def redact(text: str) -> str:
    """`text` with URL credentials and key-like query parameters masked."""
    if not isinstance(text, str) or ("@" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _KEY_PARAM.sub(lambda m: f"{m['name']}{MASK}", text)


def redact_tree(value: Any) -> Any:
    """Every string inside a JSON-like value redacted (a spec dump for the manifest)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in each record's final message (vectune's own
    lines and the libraries' alike: httpx logs request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
