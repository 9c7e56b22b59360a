"""aligngym/ToolUse-v0: answer questions by calling tools (search, lookup, sql, calculator, python, your own)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aligngym.agents.chat_wire import text_of
from aligngym.feedback.answers import is_number
from aligngym.feedback.verifier import Verifier

from .base import Message, StepResult, TextEnv
from .datasets import load_rows, pick_task
from .mcp_tools import MCPServerSpec, MCPToolServers, refuse_collisions
from .tool_calls import (
    MAX_CALLS,
    ToolCall,
    has_text_calls,
    parse_native_calls,
    parse_text_calls,
    validate_arguments,
)
from .tool_data import Corpus, SqlDatabase
from .tools import PythonTool, Tool, as_tools, calculator

#: Names of the shipped tools, in the order they are offered.
BUILTIN_TOOLS = ("search", "lookup", "sql", "calculator", "python")
#: Tool errors beyond this many cost nothing more, so one bad episode cannot swamp the answer reward.
MAX_PENALISED_ERRORS = 4


@dataclass(frozen=True)
class ToolTask:
    """A question with a short gold answer, the tools it needs, and expert calls whose results give it."""

    id: str
    question: str
    answer: str
    tools_needed: tuple[str, ...] = ()
    expert: tuple[dict[str, Any], ...] = ()
    tolerance: float = 1e-6

    @classmethod
    def from_row(cls, row: Mapping[str, Any], index: int) -> ToolTask:
        """A task from a JSONL row ``{"id", "question", "answer", "tools_needed", "expert"?, "tolerance"?}``."""
        label = f"tool task {row.get('id', index)!r}"
        if not isinstance(row.get("question"), str) or row.get("answer") in (None, ""):
            raise ValueError(f"{label}: needs a question string and an answer")
        expert = row.get("expert", [])
        if not isinstance(expert, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
            for c in expert
        ):
            raise ValueError(f"{label}: expert must be a list of {{'name': str, 'arguments': dict}}")
        return cls(
            id=str(row.get("id", index)),
            question=row["question"],
            answer=str(row["answer"]),
            tools_needed=tuple(row.get("tools_needed", ())),
            expert=tuple(expert),
            tolerance=float(row.get("tolerance", 1e-6)),
        )


def load_tasks(source: str | Path | Iterable[Mapping[str, Any] | ToolTask] | None = None) -> list[ToolTask]:
    """Tasks from a JSONL path, a list of rows, or (``None``) the shipped ``envs/data/tool_tasks.jsonl``."""
    rows = load_rows(source, "tool_tasks.jsonl")
    tasks = [r if isinstance(r, ToolTask) else ToolTask.from_row(r, i) for i, r in enumerate(rows)]
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"tool tasks: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
    if not tasks:
        raise ValueError("no tool tasks given")
    return tasks


def expert_text(call: Mapping[str, Any]) -> str:
    """An expert call written in the text protocol."""
    return f"<tool_call>{json.dumps({'name': call['name'], 'arguments': call['arguments']})}</tool_call>"


class ToolUseEnv(TextEnv):
    """Answer a question by calling tools, then reply with the answer and no tool call.

    Tools are ``search``/``lookup`` over a corpus of documents about fictional places, people and firms,
    ``sql`` (read-only) over a small company database, ``calculator`` and ``python`` (in a sandbox from the
    shared pool). ``tools=[fn, ...]`` adds plain typed, documented functions (their schema comes from the
    signature and docstring) and replaces a built-in of the same name; ``builtin_tools=False`` (or a list of
    names) drops the built-ins. ``mcp_servers=[{"command": ..., "args": [...]}, {"url": "http://..."}]`` adds
    the tools of MCP servers (``envs/mcp_tools.py``, docs/mcp.md): started at construction, stopped by
    ``close()``; a tool named like one of the env's tools or an answer tool is refused.

    Calls come as native OpenAI ``tool_calls`` (``accepts_messages``: ``turn`` gets the assistant message
    dict) or as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text, several per message.
    Results return as ``tool`` messages (``text_results="user"`` packs text-protocol results into one user
    message of ``<tool_response>`` blocks, for servers that reject tool messages without native calls). A
    malformed call (bad JSON, unknown tool, arguments not fitting the schema) gets an error result, never
    an exception. A message without a tool call is the final answer and ends the episode (terminated);
    ``max_turns`` ends it otherwise (truncated).

    Reward components: ``answer`` (1 if the final answer, read by the shared ``aligngym.feedback.answers``
    extraction, matches the gold: numbers within a relative and absolute 1e-6 by default, names after
    normalisation; several different answers score 0), ``format`` (fraction of tool calls that were
    well-formed; 0 with no calls), ``tool_errors`` (malformed calls plus calls the tool failed), and
    ``tool_calls``. The reward, paid on the episode's last turn (0 before), is
    ``answer + 0.1 * format - 0.05 * min(tool_errors, 4)``.
    """

    success_component = "answer"
    description = (
        "Answer questions with tools (search, lookup, sql, calculator, python); native or text calls."
    )
    accepts_messages = True

    def __init__(
        self,
        tasks: str | Path | Iterable[Mapping[str, Any] | ToolTask] | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        builtin_tools: bool | Sequence[str] = True,
        max_turns: int = 8,
        corpus: str | Path | Iterable[Mapping[str, Any]] | None = None,
        database: str | Path | None = None,
        sandbox: Any = "local",
        timeout: float = 10.0,
        sandbox_kwargs: Mapping[str, Any] | None = None,
        text_results: Literal["tool", "user"] = "tool",
        system_prompt: str | None = None,
        render_mode: str | None = None,
        mcp_servers: Sequence[MCPServerSpec | Mapping[str, Any]] | None = None,
    ):
        self._mcp: MCPToolServers | None = None
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if text_results not in ("tool", "user"):
            raise ValueError(f"text_results must be 'tool' or 'user', got {text_results!r}")
        self.tasks = load_tasks(tasks)
        self._by_id = {t.id: t for t in self.tasks}
        self.text_results = text_results
        wanted = BUILTIN_TOOLS if builtin_tools is True else tuple(builtin_tools or ())
        unknown = [n for n in wanted if n not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"unknown built-in tools {unknown}; built-ins: {', '.join(BUILTIN_TOOLS)}")
        self._python: PythonTool | None = None
        self.database: SqlDatabase | None = None
        builtins = self._builtins(wanted, corpus, database, sandbox, timeout, sandbox_kwargs)
        extra = as_tools(tools)
        names = [t.name for t in extra]
        if len(set(names)) != len(names):
            raise ValueError(f"two tools share a name: {names}")
        self.tools: dict[str, Tool] = {t.name: t for t in builtins if t.name not in names}
        self.tools.update((t.name, t) for t in extra)
        if mcp_servers:
            self._add_mcp_tools(mcp_servers)
        if not self.tools:
            raise ValueError("no tools: pass tools=[...] or keep builtin_tools")
        self.tool_schemas = [t.schema for t in self.tools.values()]
        self.task: ToolTask | None = None
        self._calls = self._malformed = self._failed = 0

    def _builtins(
        self,
        wanted: Sequence[str],
        corpus: Any,
        database: Any,
        sandbox: Any,
        timeout: float,
        sandbox_kwargs: Mapping[str, Any] | None,
    ) -> list[Tool]:
        fns: dict[str, Callable[..., Any]] = {"calculator": calculator}
        if "search" in wanted or "lookup" in wanted:
            docs = (
                Corpus.shared(corpus) if corpus is None or isinstance(corpus, str | Path) else Corpus(corpus)
            )
            fns.update(search=docs.search, lookup=docs.lookup)
        if "sql" in wanted:
            self.database = SqlDatabase(database)
            fns["sql"] = self.database.sql
        if "python" in wanted:
            self._python = PythonTool(sandbox, timeout=timeout, sandbox_kwargs=dict(sandbox_kwargs or {}))
            fns["python"] = self._python.python
        return [Tool(fns[name]) for name in wanted]

    def _add_mcp_tools(self, specs: Sequence[MCPServerSpec | Mapping[str, Any]]) -> None:
        """Start the servers and offer their tools; on any refusal they are stopped before the error rises."""
        self._mcp = MCPToolServers(specs)
        try:
            refuse_collisions(self._mcp.tools, taken=self.tools)
        except BaseException:
            self._mcp.close()
            raise
        self.tools.update((t.name, t) for t in self._mcp.tools)

    def close(self) -> None:
        """End an open episode, then stop the MCP servers (idempotent)."""
        try:
            super().close()
        finally:
            if self._mcp is not None:
                self._mcp.close()

    async def aclose(self) -> None:
        """``close`` without blocking the event loop while MCP servers stop."""
        if self._mcp is not None:
            await asyncio.to_thread(self._mcp.close)
        await super().aclose()

    # -- episode ------------------------------------------------------------------------------------
    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        self.task = pick_task(self.tasks, self._by_id, self.np_random, options)
        # A clean sandbox each episode: the last one gave its sandbox back (aend_episode), and the pool reset it.
        self._calls = self._malformed = self._failed = 0
        return self._prompt(self.task), {"task_id": self.task.id}

    def _prompt(self, task: ToolTask) -> str:
        lines = [task.question, "", "Tools you can call:"]
        lines += [f"- {t.signature()}: {t.description}" for t in self.tools.values()]
        if self.database is not None and "sql" in self.tools and self.tools["sql"].fn == self.database.sql:
            lines += ["", "The sql database has these tables:", self.database.description]
        lines += [
            "",
            "Call tools with function calling, or by writing "
            '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> (several per message allowed); '
            "the results come back in the next message.",
            f"You have {self.max_turns} turns. When you know the answer, reply without any tool call and end "
            "with 'Answer: <answer>' (just the number or the name).",
        ]
        return "\n".join(lines)

    async def aturn(self, action: Any) -> StepResult:
        task = self._current_task()
        message: Message = action if isinstance(action, dict) else {"role": "assistant", "content": action}
        content = text_of(message.get("content"))
        native = message.get("tool_calls")
        if native:
            calls = parse_native_calls(native)
        elif has_text_calls(content):
            calls = parse_text_calls(content, id_prefix=f"call_{self.turns}")
        else:
            return await self._final(task, content)
        results = [await self._run(call, i) for i, call in enumerate(calls)]
        if native or self.text_results == "tool":
            messages = [
                {"role": "tool", "tool_call_id": c.id, "name": c.name or "invalid", "content": text}
                for c, text in zip(calls, results, strict=True)
            ]
        else:
            blocks = "\n".join(f"<tool_response>\n{text}\n</tool_response>" for text in results)
            messages = [{"role": "user", "content": blocks}]
        last = self.turns >= self.max_turns
        return StepResult(
            observation="\n\n".join(results),
            reward=self._reward(0.0) if last else 0.0,
            components=self._components(0.0),
            info={"task_id": task.id},
            messages=messages,
        )

    async def aend_episode(self) -> None:
        if self._python is not None:
            await asyncio.to_thread(self._python.release)  # the pool resets the sandbox: that waits

    # -- helpers ------------------------------------------------------------------------------------
    def _current_task(self) -> ToolTask:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        return self.task

    async def _run(self, call: ToolCall, index: int) -> str:
        """The result text of one call; malformed calls and tool failures are counted, never raised."""
        self._calls += 1
        tool = self.tools.get(call.name)
        if index >= MAX_CALLS:
            problem = f"too many tool calls in one message (at most {MAX_CALLS})"
        elif call.error:
            problem = call.error
        elif tool is None:
            problem = f"unknown tool {call.name!r}; tools: {', '.join(self.tools)}"
        else:
            problem = validate_arguments(tool.parameters, call.arguments)
        if problem or tool is None:
            self._malformed += 1
            return f"Error: {problem}"
        result = await tool.acall(call.arguments)
        self._failed += result.error
        return result.content

    async def _final(self, task: ToolTask, content: str) -> StepResult:
        if is_number(task.answer):
            verifier = Verifier(mode="numeric", tolerance=task.tolerance)
        else:
            verifier = Verifier(mode="normalized")
        result = await verifier.ascore(self.messages, content, gold=task.answer)
        correct = result.score
        return StepResult(
            observation="",
            reward=self._reward(correct),
            terminated=True,
            components=self._components(correct),
            info={"task_id": task.id, "answer": result.info["extracted"], "correct": bool(correct)},
        )

    def _components(self, answer: float) -> dict[str, float]:
        well_formed = (self._calls - self._malformed) / self._calls if self._calls else 0.0
        return {
            "answer": answer,
            "format": well_formed,
            "tool_errors": float(self._malformed + self._failed),
            "tool_calls": float(self._calls),
        }

    def _reward(self, answer: float) -> float:
        parts = self._components(answer)
        return answer + 0.1 * parts["format"] - 0.05 * min(parts["tool_errors"], MAX_PENALISED_ERRORS)
