"""The dashboard's page and assets, and the self-contained HTML report built from them.

Everything a page needs ships in `static/` (the chart library and Swagger UI are
vendored there), so nothing is fetched from another host.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import orjson

_MARK = "<!--ASSETS-->"
LIVE_ASSETS = ('<link rel="stylesheet" href="/static/dashboard.css">\n'
               '<script src="/static/vendor/chart.umd.min.js"></script>\n'
               '<script src="/static/dashboard.js"></script>')
# Banner comments of the vendored library name their home pages; a report file keeps
# the copyright and license lines but no address at all.
_URL_LINE = re.compile(r"^ \* https?://\S+\n", re.MULTILINE)

CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".html": "text/html; charset=utf-8"}


@cache
def _static(name: str) -> bytes:
    target = (resources.files("app.web") / "static").joinpath(*name.split("/"))
    if not target.is_file():
        raise KeyError(name)
    return target.read_bytes()


def asset(name: str) -> bytes:
    """A script or style under `static/`, as served at `/static/`: KeyError for anything
    else (the page itself and path tricks included)."""
    if not re.fullmatch(r"(vendor/)?[A-Za-z0-9_.-]+\.(js|css)", name) or ".." in name:
        raise KeyError(name)
    return _static(name)


def asset_text(name: str) -> str:
    return _static(name).decode("utf-8")


def dashboard_page() -> str:
    return asset_text("dashboard.html").replace(_MARK, LIVE_ASSETS)


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def report_page(data: dict[str, Any]) -> str:
    """One HTML file holding the charts, the code and the data: opens offline from disk."""
    payload = {**data, "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    library = _URL_LINE.sub("", asset_text("vendor/chart.umd.min.js")).replace("</script", "<\\/script")
    inline = (f"<style>\n{asset_text('dashboard.css')}\n</style>\n"
              f"<script>{library}</script>\n"
              f"<script>window.KB_DATA = {_script_json(payload)};</script>\n"
              f"<script>{asset_text('dashboard.js')}</script>")
    return asset_text("dashboard.html").replace(_MARK, inline).replace("<title>trading-kb</title>",
                                                                        "<title>trading-kb report</title>")
