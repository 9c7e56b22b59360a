"""Tools for tool-using environments: any typed, documented Python function, plus ``calculator`` and ``python``.

A tool's OpenAI schema is built from its signature and Google-style docstring by
``transformers.utils.get_json_schema``, so a plain function is all a user writes:

>>> def add(a: int, b: int) -> int:
...     '''Add two numbers.
...
...     Args:
...         a: The first number.
...         b: The second number.
...     '''
...     return a + b
>>> Tool(add).schema["function"]["parameters"]["required"]
['a', 'b']
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aligngym.sandboxes.lease import SandboxLease

#: Characters of one tool result the model sees; longer results keep their head and tail.
MAX_RESULT_CHARS = 4000


class ToolError(Exception):
    """A tool refused or failed; the model sees ``Error: <message>`` and the call counts as a tool error."""


@dataclass
class ToolResult:
    """What the model reads back from one call, and whether it is an error."""

    content: str
    error: bool = False


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and tail (tracebacks end at the tail)."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


class Tool:
    """A callable the model may call by name; sync functions run in a worker thread, async ones are awaited.

    The schema comes from ``fn``'s signature and docstring, or is given (``schema=``, an OpenAI function
    schema) for a callable taking the arguments as keywords, e.g. a tool of an MCP server.
    """

    def __init__(
        self, fn: Callable[..., Any], max_chars: int = MAX_RESULT_CHARS, schema: dict[str, Any] | None = None
    ):
        if not callable(fn):
            raise TypeError(f"a tool must be callable, got {type(fn).__name__}")
        if schema is None:
            schema = _schema_of(fn)
        self.fn = fn
        self.schema: dict[str, Any] = schema
        self.max_chars = max_chars

    @property
    def name(self) -> str:
        """The name the model calls."""
        return self.schema["function"]["name"]

    @property
    def description(self) -> str:
        """The docstring summary shown to the model."""
        return self.schema["function"].get("description", "")

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments (an ``object`` schema)."""
        return self.schema["function"].get("parameters", {"type": "object", "properties": {}})

    def signature(self) -> str:
        """A one-line ``name(arg: type, ...)`` for prompts."""
        props = self.parameters.get("properties", {})
        required = set(self.parameters.get("required", []))
        args = [f"{k}: {v.get('type', 'any')}{'' if k in required else '?'}" for k, v in props.items()]
        return f"{self.name}({', '.join(args)})"

    async def acall(self, arguments: dict[str, Any]) -> ToolResult:
        """Run the tool; every failure becomes an error result, never an exception."""
        try:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(**arguments)
            else:
                value = await asyncio.to_thread(self.fn, **arguments)
                if inspect.isawaitable(value):
                    value = await value
        except ToolError as exc:
            return ToolResult(clip(f"Error: {exc}", self.max_chars), error=True)
        except Exception as exc:  # a user tool may raise anything; the model reads it as an error
            return ToolResult(clip(f"Error: {type(exc).__name__}: {exc}", self.max_chars), error=True)
        return ToolResult(clip(_as_text(value), self.max_chars))

    def __repr__(self) -> str:
        return f"Tool({self.signature()})"


def _schema_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI function schema of a typed function with a Google-style docstring."""
    from transformers.utils import get_json_schema  # imported on use: transformers is slow to import

    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # transformers raises its own parsing exceptions
        raise ValueError(
            f"cannot build a JSON schema for tool {getattr(fn, '__name__', fn)!r}: {exc} (a tool needs type "
            "hints and a Google-style docstring with an Args: section)"
        ) from exc
    # "return" is a transformers extension that strict OpenAI-compatible servers reject.
    schema["function"].pop("return", None)
    return schema


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # circular structures
        return repr(value)


def as_tools(items: Iterable[Tool | Callable[..., Any]]) -> list[Tool]:
    """``Tool`` objects for a mix of tools and plain functions."""
    return [item if isinstance(item, Tool) else Tool(item) for item in items]


# -- calculator -------------------------------------------------------------------------------------
MAX_EXPRESSION_CHARS = 500
#: Largest integer (in bits) the calculator builds; a bigger power or product is refused before it runs.
MAX_INT_BITS = 10_000
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or not 0 <= n <= 1000:
        raise ToolError("factorial takes an integer from 0 to 1000")
    return math.factorial(n)


def _round(x: Any, ndigits: Any = None) -> Any:
    # round(10**3000, -10**9) would build 10**(10**9) first.
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > 100):
        raise ToolError("round's digits must be an integer from -100 to 100")
    return round(x, ndigits)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{
        name: getattr(math, name)
        for name in [
            "sqrt",
            "exp",
            "log",
            "log10",
            "log2",
            "sin",
            "cos",
            "tan",
            "asin",
            "acos",
            "atan",
            "atan2",
            "sinh",
            "cosh",
            "tanh",
            "floor",
            "ceil",
            "hypot",
            "degrees",
            "radians",
        ]
    },
    "abs": abs,
    "min": min,
    "max": max,
    "round": _round,
    "factorial": _factorial,
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly as written and return the result.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, constants pi, e, tau and the functions sqrt, exp, log, log10, log2, sin, cos, tan, asin, acos, atan, atan2, sinh, cosh, tanh, floor, ceil, hypot, degrees, radians, abs, min, max, round, factorial; e.g. "round(1000 * (1 + 0.05 / 12) ** 120, 2)".
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        value = _eval(tree.body)
    except ToolError:
        raise
    except SyntaxError as exc:
        raise ToolError(f"not a valid expression ({exc.msg})") from None
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    except (RecursionError, MemoryError):
        raise ToolError("the expression is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise ToolError(str(exc)) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return repr(value) if isinstance(value, float) else str(value)


def _eval(node: ast.AST) -> Any:
    """Evaluate one allowed node; anything else (names, attributes, strings, ...) is refused."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if isinstance(node.op, ast.BitXor):
            raise ToolError("^ is not a power here; write ** (e.g. 2 ** 10)")
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ToolError(f"operator {type(node.op).__name__} is not allowed")
        return _checked(op(left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; constants: {', '.join(_CONSTANTS)}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ToolError(f"function {what!r} is not allowed; functions: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise ToolError("keyword arguments are not allowed")
        return _checked(_FUNCTIONS[node.func.id](*(_eval(arg) for arg in node.args)))
    raise ToolError(f"{type(node).__name__} is not allowed in an expression")


def _power(base: Any, exponent: Any) -> Any:
    # An integer power has about exponent * log2(base) bits: refuse before Python spends minutes on it.
    exact = isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
    if exact and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise ToolError(f"the result of {base} ** {exponent} is too large")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("the result is not a real number")
    return _checked(result)


def _checked(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    return value


# -- python (in a sandbox) ----------------------------------------------------------------------------
class PythonTool:
    """The ``python`` tool: runs model-written programs in a sandbox leased from the shared pool."""

    def __init__(
        self,
        sandbox: Any = "local",
        timeout: float = 10.0,
        sandbox_kwargs: dict[str, Any] | None = None,
        max_chars: int = 2000,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.timeout = float(timeout)
        self.max_chars = max_chars
        self.lease = SandboxLease(sandbox, **{"timeout": self.timeout, **(sandbox_kwargs or {})})

    async def python(self, code: str) -> str:
        """Run a Python 3 program in a fresh sandbox (no network) and return its exit code, stdout and stderr.

        Args:
            code: The complete program; print() what you want to see.
        """
        sandbox = await self.lease.aget()
        result = await sandbox.arun(code, timeout=self.timeout)
        parts = [f"exit code: {result.exit_code}"]
        for label, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if text.strip():
                parts.append(f"{label}:\n{clip(text.rstrip(), self.max_chars)}")
        report = "\n".join(parts)
        if result.status == "ok":
            return report
        reasons = {
            "timeout": f"timed out after {self.timeout:g}s",
            "memory": "ran out of memory",
            "output_limit": "printed too much output",
            "sandbox_error": "the sandbox failed",
        }
        raise ToolError(f"the program {reasons.get(result.status, 'failed')}\n{report}")

    def release(self) -> None:
        """Give the sandbox back to the pool (reset), e.g. between episodes."""
        self.lease.release()
