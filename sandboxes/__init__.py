"""Sandboxes where untrusted (model-written) code runs: ``make_sandbox("local")`` uses bubblewrap on this machine,
``make_sandbox("docker")`` a locked-down container (image from ``build_image``).

>>> with make_sandbox("local", timeout=10) as sb:
...     sb.run("print(1)").stdout
'1\\n'
"""

from .base import RunResult, Sandbox, SandboxConfig, SandboxError
from .cap import ClusterGate, set_cluster_gate, set_max_sandboxes
from .docker_backend import DockerPool, DockerSandbox, reap_orphans
from .docker_image import build_image, ensure_image
from .factory import BACKENDS, make_sandbox
from .lease import SandboxLease
from .local import LocalSandbox, bwrap_available
from .pool import SandboxPool, get_pool

__all__ = [
    "BACKENDS",
    "ClusterGate",
    "DockerPool",
    "DockerSandbox",
    "LocalSandbox",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxLease",
    "SandboxPool",
    "build_image",
    "bwrap_available",
    "ensure_image",
    "get_pool",
    "make_sandbox",
    "reap_orphans",
    "set_cluster_gate",
    "set_max_sandboxes",
]
