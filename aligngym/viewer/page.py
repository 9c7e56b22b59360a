"""The HTML file: one page with its script, style and data inline, and a policy that forbids the network.

Row text is model-written and hostile. It reaches the page only as JSON inside a non-executed
``<script type="application/json">``, escaped so that nothing in it can end that element, and the script
puts it on screen with ``textContent`` only. The Content-Security-Policy allows exactly our own script and
style (by hash): even markup that slipped through could neither run nor load anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources
from typing import Any

#: What may never appear in the embedded JSON: ``<`` (``</script>``, ``<!--``), ``>`` and ``&`` (entities),
#: and the line separators that old JavaScript parsers took for line ends.
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def embed_json(value: Any) -> str:
    """``value`` as JSON that is safe as the text of a ``<script type="application/json">`` element."""
    # ensure_ascii: lone surrogates (valid JSON escapes, invalid UTF-8) stay escapes instead of breaking the file.
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _ESCAPES[m.group()], text)


def csp_hash(source: str) -> str:
    """The CSP source expression that allows exactly this inline script or style."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(script: str, style: str) -> str:
    """No network, no plugins, no forms; only the page's own inline script and style run."""
    return (
        f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render_page(data: dict[str, Any]) -> str:
    """The whole HTML document for ``data`` (the page model built by ``aligngym.viewer.build_data``)."""
    script, style = _asset("viewer.js"), _asset("viewer.css")
    # Our own assets hold no closing tag of their element, so the browser reads each as one block.
    assert "</script" not in script.lower() and "</style" not in style.lower()
    parts = {
        "csp": content_security_policy(script, style),
        "style": style,
        "script": script,
        "data": embed_json(data),
    }
    # One pass: a value is never scanned for placeholders, so row text cannot inject one.
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], _asset("page.html"))
