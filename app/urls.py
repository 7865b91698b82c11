"""Printing connection strings without their secrets."""

from __future__ import annotations

import re

_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL or libpq string with any password replaced by `***`. In a URL the
    credentials are everything between `://` and the last `@`, so a password holding
    `@`, `/`, `?` or `:` is hidden whole."""
    head, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        url = f"{head}://{user}{':***' if colon else ''}@{host}"
    return _PASSWORD_PARAM.sub(r"\1***", url)
