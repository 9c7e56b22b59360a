"""The MCP side of ``mcp_tools``: server specs, one session per server held open on a private event loop,
results as text. The ``mcp`` package is imported on use: importing this module costs nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import tempfile
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from .tools import MAX_RESULT_CHARS, ToolError

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: A name the model can call (OpenAI's rule); MCP allows dots and slashes, which strict servers reject.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Tools one server may offer; more would flood the prompt.
MAX_TOOLS = 128
#: Seconds ``close`` waits for the servers to stop; the SDK bounds a stdio shutdown to about 6.5 s.
STOP_TIMEOUT = 20.0
#: Characters of a server's stderr quoted when it fails to start.
STDERR_TAIL = 2000
_SPEC_KEYS = frozenset(
    ["command", "args", "env", "cwd", "url", "name", "timeout", "startup_timeout", "max_result_chars"]
)


class MCPServerError(RuntimeError):
    """An MCP server failed to start, or its tools cannot be offered."""


@dataclass(frozen=True)
class MCPServerSpec:
    """One server: ``command`` (+ ``args``, ``env``, ``cwd``) for stdio, or ``url`` for streamable HTTP.

    ``name`` prefixes its tools (``name_tool``); ``timeout`` bounds a call, ``startup_timeout`` the start and
    listing, ``max_result_chars`` a result as the model sees it.
    """

    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    name: str | None = None
    timeout: float = 30.0
    startup_timeout: float = 30.0
    max_result_chars: int = MAX_RESULT_CHARS

    @classmethod
    def parse(cls, spec: MCPServerSpec | Mapping[str, Any]) -> MCPServerSpec:
        """A spec from ``{"command": ..., "args": [...], "env": {...}}`` or ``{"url": "http://..."}``."""
        if isinstance(spec, MCPServerSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"an MCP server is a dict with 'command' or 'url', got {type(spec).__name__}")
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise ValueError(f"MCP server {dict(spec)!r}: unknown keys {unknown}; keys: {sorted(_SPEC_KEYS)}")
        if ("command" in spec) == ("url" in spec):
            raise ValueError(
                f"MCP server {dict(spec)!r}: give exactly one of 'command' (stdio) or 'url' (HTTP)"
            )
        args, env = spec.get("args", ()), spec.get("env")
        if isinstance(args, str) or not isinstance(args, Sequence) or not isinstance(env, Mapping | None):
            raise ValueError(f"MCP server {dict(spec)!r}: args is a list of strings, env a dict of strings")
        parsed = cls(
            command=spec.get("command"),
            args=tuple(args),
            env=None if env is None else dict(env),
            cwd=None if spec.get("cwd") is None else str(spec["cwd"]),
            url=spec.get("url"),
            name=spec.get("name"),
            timeout=float(spec.get("timeout", cls.timeout)),
            startup_timeout=float(spec.get("startup_timeout", cls.startup_timeout)),
            max_result_chars=int(spec.get("max_result_chars", cls.max_result_chars)),
        )
        parsed._check()
        return parsed

    def _check(self) -> None:
        strings = [self.command, *self.args, *(self.env or {}).keys(), *(self.env or {}).values()]
        if self.url is None and (not all(isinstance(s, str) for s in strings) or not self.command):
            raise ValueError(f"MCP server {self.label}: command, args and env must be strings")
        if self.url is not None and not (
            isinstance(self.url, str) and self.url.startswith(("http://", "https://"))
        ):
            raise ValueError(f"MCP server url must be http:// or https://, got {self.url!r}")
        if self.name is not None and not (isinstance(self.name, str) and TOOL_NAME.match(self.name)):
            raise ValueError(f"MCP server name must match {TOOL_NAME.pattern}, got {self.name!r}")
        if self.timeout <= 0 or self.startup_timeout <= 0 or self.max_result_chars < 100:
            raise ValueError(
                f"MCP server {self.label}: timeout and startup_timeout must be > 0, max_result_chars >= 100"
            )

    @property
    def label(self) -> str:
        """How errors name the server: its command line or its URL."""
        if self.url is not None:
            return repr(self.url)
        return repr(" ".join([str(self.command), *map(str, self.args)]))

    def exposed(self, tool: str) -> str:
        """The name the model calls for the server's tool ``tool``."""
        return f"{self.name}_{tool}" if self.name else tool


# -- results ----------------------------------------------------------------------------------------
def render_result(result: Any) -> str:
    """The text of a ``CallToolResult``; ``ToolError`` when the server flags it as an error."""
    parts = [_block_text(block) for block in result.content or ()]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False, default=str)]
    text = "\n".join(parts) if parts else "(no output)"
    if result.is_error:
        raise ToolError(text)
    return text


def _block_text(block: Any) -> str:
    """One content block as text; what text cannot carry (images, audio, blobs) is named, not passed on."""
    kind = getattr(block, "type", "?")
    if kind == "text":
        return block.text
    if kind in ("image", "audio"):
        size = len(block.data) * 3 // 4  # base64
        return (
            f"[{kind} ({block.mime_type}, about {size} bytes) not shown: this environment passes text only]"
        )
    if kind == "resource_link":
        return f"[resource {block.name}: {block.uri}]"
    if kind == "resource":
        resource = block.resource
        if getattr(resource, "text", None) is not None:
            return f"[resource {resource.uri}]\n{resource.text}"
        return f"[binary resource {resource.uri} ({resource.mime_type}) not shown: text only]"
    return f"[{kind} content not shown: text only]"


# -- the loop thread ------------------------------------------------------------------------------
class LoopThread:
    """An asyncio loop run by ``asyncio.run`` on a daemon thread until ``stop``; its cleanup is asyncio's."""

    def __init__(self, name: str):
        self._started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        # Daemon: an env nobody closed must not keep the interpreter alive (a finalizer still stops it).
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), name=name, daemon=True)
        self.thread.start()
        self._started.wait()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        await self._stopping.wait()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its result is a thread-safe future."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float) -> None:
        """End the loop (asyncio.run cancels what is left, shuts its executor down) and join the thread."""
        if self.loop is not None and self._stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stopping.set)
        self.thread.join(timeout)
        if self.thread.is_alive():
            logger.warning("the MCP event-loop thread did not stop within %.0fs", timeout)


# -- one server -------------------------------------------------------------------------------------
@dataclass(eq=False)
class Connection:
    """A server's session, held open by one task (anyio scopes must exit in the task that entered them)."""

    spec: MCPServerSpec
    errlog: IO[str] | None = None
    client: Any = None
    listed: list[Any] = field(default_factory=list)
    stop: asyncio.Event | None = None
    task: asyncio.Task[None] | None = None

    def target(self) -> Any:
        """What ``mcp.Client`` connects to: the URL, or a stdio transport writing stderr to ``errlog``."""
        if self.spec.url is not None:
            return self.spec.url
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=self.spec.command, args=list(self.spec.args), env=self.spec.env, cwd=self.spec.cwd
        )
        # The server's stderr goes to a file (quoted if it fails to start), not into the caller's stderr.
        return stdio_client(params, errlog=self.errlog)

    async def hold(self, ready: asyncio.Future[None]) -> None:
        """Connect, list the tools, signal ``ready`` and keep the session until ``stop`` is set."""
        from mcp import Client

        self.stop = asyncio.Event()
        try:
            async with Client(self.target(), cache=None) as client:
                self.listed = await list_tools(client)
                self.client = client
                if ready.done():  # start-up gave up on it meanwhile
                    return
                ready.set_result(None)
                await self.stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except BaseException as exc:  # noqa: BLE001 - anyio wraps failures in exception groups
            if not ready.done():
                ready.set_exception(exc)
            else:  # the server went away mid-session: its calls already failed as tool errors
                logger.debug("MCP server %s ended: %r", self.spec.label, exc)
        finally:
            self.client = None

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """One ``tools/call``, its result as text; every failure is a ``ToolError``."""
        from mcp import MCPError

        client = self.client
        if client is None:
            raise ToolError(f"the MCP server {self.spec.label} is not running")
        try:
            result = await asyncio.wait_for(client.call_tool(name, arguments), self.spec.timeout)
        except TimeoutError:
            raise ToolError(f"the MCP tool {name!r} timed out after {self.spec.timeout:g}s") from None
        except MCPError as exc:
            raise ToolError(f"the MCP server {self.spec.label} failed: {exc}") from None
        except Exception as exc:  # a malformed result fails validation; the model reads it as an error
            raise ToolError(f"the MCP server {self.spec.label} failed: {type(exc).__name__}: {exc}") from None
        return render_result(result)

    def stderr_tail(self) -> str:
        """The last lines the server wrote to stderr ("" for HTTP servers)."""
        if self.errlog is None or self.errlog.closed:
            return ""
        self.errlog.flush()
        self.errlog.seek(0)
        return self.errlog.read()[-STDERR_TAIL:].strip()


async def list_tools(client: Any) -> list[Any]:
    """Every tool the server lists (following its pages), at most ``MAX_TOOLS``."""
    tools: list[Any] = []
    cursor = None
    for _ in range(MAX_TOOLS + 1):  # a page may be empty: bound the pages too, not only the tools
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if len(tools) > MAX_TOOLS:
            break
        if not cursor:
            return tools
    raise MCPServerError(f"the server lists more than {MAX_TOOLS} tools (or pages)")


def leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def new_errlog() -> IO[str]:
    """A file for a stdio server's stderr (its owner closes it, which deletes it)."""
    return tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115


# -- start and stop (on the loop) ---------------------------------------------------------------------
async def start_all(connections: Sequence[Connection]) -> None:
    """Start every server; the first that fails (or does not answer in time) is raised, naming it."""
    loop = asyncio.get_running_loop()
    readies = [loop.create_future() for _ in connections]
    for conn, ready in zip(connections, readies, strict=True):
        conn.task = asyncio.create_task(conn.hold(ready))
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(r, c.spec.startup_timeout) for c, r in zip(connections, readies, strict=True)),
        return_exceptions=True,
    )
    for conn, outcome in zip(connections, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise _start_error(conn, outcome)


def _start_error(conn: Connection, exc: BaseException) -> MCPServerError:
    kind = "stdio" if conn.spec.url is None else "HTTP"
    if isinstance(exc, TimeoutError | asyncio.CancelledError):
        why = f"did not answer the MCP handshake and tools/list within {conn.spec.startup_timeout:g}s"
    else:
        cause = leaf(exc)
        why = f"failed to start: {type(cause).__name__}: {cause}"
    stderr = conn.stderr_tail()
    return MCPServerError(
        f"MCP {kind} server {conn.spec.label} {why}" + (f"\nits stderr ends:\n{stderr}" if stderr else "")
    )


async def stop_all(connections: Sequence[Connection]) -> None:
    """Close every session in the task that holds it; a server still starting is cancelled."""
    tasks = [c.task for c in connections if c.task is not None]
    for conn in connections:
        if conn.client is None and conn.task is not None:
            conn.task.cancel()  # still starting (a server that never answers): nothing to wait for
        elif conn.stop is not None:
            conn.stop.set()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT / 2)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
