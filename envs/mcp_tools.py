"""MCP tool servers as environment tools: a stdio command or a streamable-HTTP URL per server.

``MCPToolServers(specs)`` starts every server (concurrently), lists its tools and offers each as a ``Tool``
(``tools``) whose schema is the server's input schema; calling one sends ``tools/call`` and renders the
result as text (``mcp_client``). The MCP SDK is async (anyio): its sessions live on one event loop in a
daemon thread owned by this object, so an environment's step, sync or async, only waits on a future.
``close()`` stops the servers (stdio: stdin closed, then the process group terminated), the loop and the
thread. The ``mcp`` package is imported only on use. docs/mcp.md maps MCP to the env.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from .mcp_client import (
    STOP_TIMEOUT,
    TOOL_NAME,
    Connection,
    LoopThread,
    MCPServerError,
    MCPServerSpec,
    new_errlog,
    start_all,
    stop_all,
)
from .tools import Tool, ToolError

__all__ = [
    "ANSWER_TOOL_NAMES",
    "MCPServerError",
    "MCPServerSpec",
    "MCPToolServers",
    "parse_specs",
    "refuse_collisions",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "MCP tool servers need the mcp package (2.x): pip install 'aligngym[mcp]'"
#: Names no server may take: calling one must never look like giving the final answer.
ANSWER_TOOL_NAMES = frozenset({"answer", "final_answer", "submit", "submit_answer", "finish", "done"})


def parse_specs(specs: Iterable[MCPServerSpec | Mapping[str, Any]] | None) -> list[MCPServerSpec]:
    """Checked specs (a bare string or dict is refused: the argument is a list of servers)."""
    if specs is None:
        return []
    if isinstance(specs, str | Mapping):
        raise ValueError(
            "mcp_servers is a list of servers, e.g. [{'command': 'python', 'args': ['server.py']}]"
        )
    return [MCPServerSpec.parse(s) for s in specs]


def refuse_collisions(tools: Iterable[Tool], taken: Iterable[str], reserved: Iterable[str] = ()) -> None:
    """Raise ``MCPServerError`` when a server's tool takes the name of an env tool or of a reserved one."""
    taken, reserved = set(taken), {n.lower() for n in reserved} | ANSWER_TOOL_NAMES
    for tool in tools:
        if tool.name.lower() in reserved:
            raise MCPServerError(
                f"MCP tool {tool.name!r} is refused: the name is reserved ({', '.join(sorted(reserved))}); "
                "give the server a 'name' to prefix its tools"
            )
        if tool.name in taken:
            raise MCPServerError(
                f"MCP tool {tool.name!r} has the name of one of the environment's tools "
                f"({', '.join(sorted(taken))}); give the server a 'name' to prefix its tools"
            )


# -- all servers -------------------------------------------------------------------------------------
class MCPToolServers:
    """The tools of several MCP servers, started now and stopped by ``close`` (idempotent; also at GC)."""

    def __init__(self, specs: Iterable[MCPServerSpec | Mapping[str, Any]]):
        self.specs = parse_specs(specs)
        _import_sdk()
        # A stdio server's stderr goes to a file _shutdown closes (quoted when the server fails to start).
        self._connections = [Connection(s, None if s.url else new_errlog()) for s in self.specs]
        self._runner = LoopThread(name="aligngym-mcp")
        # An env dropped without close() must not leave servers running: the finalizer holds no self.
        self._finalizer = weakref.finalize(self, _shutdown, self._runner, self._connections)
        try:
            self._runner.submit(start_all(self._connections)).result()
            self.tools = _tools_of(self._connections, self._runner.submit)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every server, the event loop and its thread."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether ``close`` ran."""
        return not self._finalizer.alive


def _import_sdk() -> None:
    try:
        from mcp import Client, MCPError, StdioServerParameters  # noqa: F401 - the 2.x API this module uses
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc


def _tools_of(
    connections: Sequence[Connection],
    submit: Callable[[Coroutine[Any, Any, str]], concurrent.futures.Future],
) -> list[Tool]:
    """One ``Tool`` per listed tool; names are checked (callable, unique across servers)."""
    tools: list[Tool] = []
    owners: dict[str, str] = {}
    for conn in connections:
        for listed in conn.listed:
            name = conn.spec.exposed(listed.name)
            if not TOOL_NAME.match(name):
                raise MCPServerError(
                    f"MCP server {conn.spec.label}: tool name {listed.name!r} is not callable by a model "
                    f"(names match {TOOL_NAME.pattern})"
                )
            if name in owners:
                raise MCPServerError(
                    f"MCP tool {name!r} is offered by {owners[name]} and {conn.spec.label}; give the servers "
                    "a 'name' to prefix their tools"
                )
            owners[name] = conn.spec.label
            tools.append(
                Tool(_caller(conn, listed.name, submit), conn.spec.max_result_chars, _schema(name, listed))
            )
    return tools


def _schema(name: str, listed: Any) -> dict[str, Any]:
    """The OpenAI function schema of an MCP tool: its input schema as the parameters."""
    parameters = dict(listed.input_schema or {})
    if parameters.get("type", "object") != "object":
        raise MCPServerError(f"MCP tool {listed.name!r}: its input schema must be an object schema")
    parameters["type"] = "object"
    parameters.setdefault("properties", {})
    description = listed.description or listed.title or ""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def _caller(
    conn: Connection, name: str, submit: Callable[[Coroutine[Any, Any, str]], concurrent.futures.Future]
) -> Callable[..., Coroutine[Any, Any, str]]:
    """The async function a ``Tool`` awaits: the call runs on the MCP loop; this side only waits."""

    async def call(**arguments: Any) -> str:
        pending = conn.call(name, arguments)
        try:
            future = submit(pending)
        except RuntimeError:  # the loop is closed: the env was closed
            pending.close()
            raise ToolError(f"the MCP server {conn.spec.label} is not running") from None
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                raise ToolError(f"the MCP server {conn.spec.label} was stopped during the call") from None
            raise  # this episode itself is being cancelled

    call.__name__ = name
    return call


def _shutdown(runner: LoopThread, connections: Sequence[Connection]) -> None:
    """Stop the servers (each session closes in its own task), then the loop; close the stderr files."""
    try:
        if runner.thread.is_alive():
            runner.submit(stop_all(connections)).result(STOP_TIMEOUT)
    except Exception as exc:  # a stop that failed or timed out: stopping the loop still cancels what is left
        logger.warning("stopping MCP servers: %r", exc)
    finally:
        runner.stop(STOP_TIMEOUT)
        for conn in connections:
            if conn.errlog is not None:
                conn.errlog.close()
