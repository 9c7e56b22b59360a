"""Sandboxes where untrusted (model-written) code runs: ``make_sandbox("local")`` uses bubblewrap on this machine.

>>> with make_sandbox("local", timeout=10) as sb:
...     sb.run("print(1)").stdout
'1\\n'
"""

from .base import RunResult, Sandbox, SandboxConfig, SandboxError
from .factory import BACKENDS, make_sandbox
from .local import LocalSandbox, bwrap_available

__all__ = [
    "BACKENDS",
    "LocalSandbox",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "bwrap_available",
    "make_sandbox",
]
