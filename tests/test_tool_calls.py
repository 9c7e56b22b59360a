"""Tool calls and tools under hostile input: parsing, argument validation, calculator, sql, search, schemas."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from aligngym.envs.tool_calls import (
    MAX_ARGUMENT_CHARS,
    parse_native_calls,
    parse_text_calls,
    validate_arguments,
)
from aligngym.envs.tool_data import Corpus, SqlDatabase
from aligngym.envs.tools import Tool, ToolError, calculator, clip


def text_call(name, arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def convert(celsius: float, precise: bool = False) -> str:
    """Convert a temperature from Celsius to Fahrenheit.

    Args:
        celsius: The temperature in degrees Celsius.
        precise: Whether to keep all decimals.
    """
    value = celsius * 9 / 5 + 32
    return str(value if precise else round(value))


# -- parsing text calls -------------------------------------------------------------------------------
def test_text_calls_several_per_message_in_order():
    text = f"Let me look.\n{text_call('search', {'query': 'x'})} and {text_call('calculator', {'expression': '1+1'})}"
    calls = parse_text_calls(text, id_prefix="t")
    assert [(c.id, c.name, c.arguments, c.error) for c in calls] == [
        ("t_0", "search", {"query": "x"}, None),
        ("t_1", "calculator", {"expression": "1+1"}, None),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "search", "arguments": {"query": "x"}', "never closed"),
        ('<tool_call>["search"]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', '"name"'),
        ('<tool_call>{"name": "search", "arguments": [1, 2]}</tool_call>', "must be a JSON object, got list"),
        ('<tool_call>{"name": "search", "arguments": 7}</tool_call>', "must be a JSON object, got int"),
        ('<tool_call>{"name": "search", "arguments": "query=x"}</tool_call>', "not valid JSON"),
    ],
)
def test_malformed_text_calls_become_errors_not_exceptions(text, message):
    [call] = parse_text_calls(text)
    assert not call.ok and message in call.error


def test_nested_tags_are_one_malformed_call():
    inner = text_call("search", {"query": "x"})
    calls = parse_text_calls(f"<tool_call>{inner}</tool_call> then {text_call('lookup', {'doc_id': 'a'})}")
    assert [c.ok for c in calls] == [False, True]
    assert "nested" in calls[0].error and calls[1].name == "lookup"


def test_huge_arguments_are_refused_before_parsing():
    [call] = parse_text_calls(text_call("python", {"code": "x" * (MAX_ARGUMENT_CHARS + 10)}))
    assert not call.ok and "limit" in call.error
    [native] = parse_native_calls(
        [{"id": "a", "function": {"name": "python", "arguments": "{" + " " * MAX_ARGUMENT_CHARS + "}"}}]
    )
    assert not native.ok and "limit" in native.error


def test_fenced_json_and_parameters_alias_and_string_arguments_are_accepted():
    fenced = '<tool_call>\n```json\n{"name": "search", "parameters": {"query": "x"}}\n```\n</tool_call>'
    double = '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"y\\"}"}</tool_call>'
    calls = parse_text_calls(fenced + double)
    assert [(c.name, c.arguments) for c in calls] == [("search", {"query": "x"}), ("search", {"query": "y"})]


def test_text_without_tags_has_no_calls():
    assert parse_text_calls("The answer is 42. </tool_call>") == []


# -- native calls -------------------------------------------------------------------------------------
def test_native_calls_with_json_string_and_dict_arguments():
    calls = parse_native_calls(
        [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "sql", "arguments": '{"query": "SELECT 1"}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "search", "arguments": {"query": "x"}}},
            {"type": "function", "function": {"name": "calculator", "arguments": ""}},
        ]
    )
    assert [(c.id, c.name, c.arguments, c.ok) for c in calls] == [
        ("c1", "sql", {"query": "SELECT 1"}, True),
        ("c2", "search", {"query": "x"}, True),
        ("call_2", "calculator", {}, True),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        [{"id": "a", "function": {"name": "sql", "arguments": "{oops"}}],
        [{"id": "a", "function": {"name": "sql", "arguments": "[1]"}}],
        [{"id": "a", "function": {"arguments": "{}"}}],
        [{"id": "a"}],
        ["not a dict"],
    ],
)
def test_malformed_native_calls_become_errors(raw):
    [call] = parse_native_calls(raw)
    assert not call.ok
    assert parse_native_calls("nope")[0].error == "tool_calls must be a list"


# -- argument validation against the generated schema ---------------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"celsius": 20}, None),
        ({"celsius": 20.5, "precise": True}, None),
        ({}, "missing required argument 'celsius'"),
        ({"celsius": "20"}, "argument 'celsius' must be number, got string"),
        ({"celsius": True}, "argument 'celsius' must be number, got boolean"),
        ({"celsius": 20, "precise": 1}, "argument 'precise' must be boolean, got integer"),
        ({"celsius": 20, "unit": "K"}, "unexpected argument 'unit' (arguments: celsius, precise)"),
    ],
)
def test_arguments_are_validated_against_the_schema(arguments, problem):
    assert validate_arguments(Tool(convert).parameters, arguments) == problem


def test_integer_arguments_refuse_floats_and_bools():
    schema = {"type": "object", "properties": {"k": {"type": "integer"}}, "required": []}
    assert validate_arguments(schema, {"k": 3}) is None
    assert "got number" in validate_arguments(schema, {"k": 3.5})
    assert "got boolean" in validate_arguments(schema, {"k": False})


# -- schemas from signatures and docstrings -------------------------------------------------------------
def test_schema_of_a_user_function():
    assert Tool(convert).schema == {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert a temperature from Celsius to Fahrenheit.",
            "parameters": {
                "type": "object",
                "properties": {
                    "celsius": {"type": "number", "description": "The temperature in degrees Celsius."},
                    "precise": {"type": "boolean", "description": "Whether to keep all decimals."},
                },
                "required": ["celsius"],
            },
        },
    }
    assert Tool(convert).signature() == "convert(celsius: number, precise: boolean?)"


def test_builtin_schemas_have_descriptions():
    corpus = Corpus()
    for fn in (calculator, corpus.search, corpus.lookup, SqlDatabase().sql):
        params = Tool(fn).parameters
        assert all(p.get("description") for p in params["properties"].values()), fn


def test_function_without_docstring_is_a_clear_error():
    def bare(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="Google-style docstring"):
        Tool(bare)


def test_tool_failures_become_error_results():
    def boom(x: int) -> str:
        """Always fails.

        Args:
            x: Ignored.
        """
        raise RuntimeError("kaput")

    result = asyncio.run(Tool(boom).acall({"x": 1}))
    assert result.error and result.content == "Error: RuntimeError: kaput"
    ok = asyncio.run(Tool(convert).acall({"celsius": 100}))
    assert not ok.error and ok.content == "212"


def test_clip_keeps_head_and_tail():
    text = "a" * 50 + "b" * 50
    clipped = clip(text, 20)
    assert clipped.startswith("a" * 10) and clipped.endswith("b" * 10) and "80 characters cut" in clipped


# -- calculator ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("-2 ** 2", "-4"),
        ("7 // 2 + 7 % 2", "4"),
        ("10 / 4", "2.5"),
        ("round(12500 * (1 + 0.042 / 12) ** 72, 2)", "16075.38"),
        ("sqrt(16) + floor(2.7) + abs(-1)", "7.0"),
        ("max(3, 9, 4) - min(3, 9, 4)", "6"),
        ("round(pi, 4)", "3.1416"),
        ("factorial(10)", "3628800"),
    ],
)
def test_calculator_arithmetic(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("(1).real", "Attribute is not allowed"),
        ("open('/etc/passwd')", "'open' is not allowed"),
        ("math.sqrt(4)", "'math.sqrt' is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "only numbers"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("2 ^ 3", "write **"),
        ("1 << 10", "not allowed"),
        ("round(2.5, ndigits=1)", "keyword"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 100000", "too large"),
        ("(2 ** 9000) * (2 ** 9000)", "too large"),
        ("factorial(100000)", "factorial"),
        ("round(10 ** 300, -10 ** 9)", "digits"),
        ("exp(1000)", "too large"),
        ("1e308 * 10", "finite"),
        ("1 / 0", "division by zero"),
        ("(-8) ** (1 / 3)", "real number"),
        ("sqrt(-1)", "math domain error"),
        ("1 +", "not a valid expression"),
        ("1" * 600, "limit"),
        ("-" * 450 + "1", None),  # deep but fine: evaluated, no RecursionError escapes
    ],
)
def test_calculator_refuses_unsafe_or_invalid_input(expression, message):
    if message is None:
        assert calculator(expression) == "1"
        return
    start = time.perf_counter()
    with pytest.raises(ToolError, match=message.replace("*", r"\*").replace("(", r"\(")):
        calculator(expression)
    # Refused before evaluating: evaluated, 9 ** 9 ** 9 or round(10 ** 300, -10 ** 9) would run for hours,
    # so a 10 s bound catches that with room for a loaded 2-core machine (real refusals take milliseconds).
    assert time.perf_counter() - start < 10.0


# -- sql ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def db():
    return SqlDatabase()


def test_sql_reads(db):
    out = db.sql("SELECT name, salary FROM employees ORDER BY salary DESC LIMIT 2")
    assert out.splitlines() == ["name | salary", "Wim Carsten | 151000", "Alma Reyt | 142000"]
    assert db.sql("SELECT name FROM employees WHERE id = -1").endswith("(no rows)")
    assert "employees(id, name, department_id" in db.description


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO departments VALUES (99, 'X', 'Y', 1)",
        "UPDATE employees SET salary = 0",
        "DELETE FROM sales",
        "DROP TABLE employees",
        "CREATE TABLE t (x)",
        "ATTACH DATABASE '/tmp/evil.db' AS evil",
        "PRAGMA writable_schema = ON",
        "PRAGMA journal_mode = WAL",
        "SELECT load_extension('/tmp/evil')",
        "BEGIN",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    ],
)
def test_sql_refuses_writes_and_escapes(db, query):
    with pytest.raises(ToolError, match="SQL error"):
        db.sql(query)
    assert db.sql("SELECT COUNT(*) FROM employees").splitlines()[1] == "30"


def test_sql_refuses_multiple_statements(db):
    with pytest.raises(ToolError, match="one statement"):
        db.sql("SELECT 1; DROP TABLE employees")
    with pytest.raises(ToolError, match="empty"):
        db.sql("   ")


def test_sql_errors_row_cap_and_time_limit(db):
    with pytest.raises(ToolError, match="no such table"):
        db.sql("SELECT * FROM nope")
    capped = SqlDatabase(max_rows=5).sql("SELECT id FROM sales")
    assert len(capped.splitlines()) == 7 and "first 5 rows" in capped
    quick = SqlDatabase(timeout_s=0.2)
    start = time.perf_counter()
    with pytest.raises(ToolError, match="longer than"):
        quick.sql("SELECT count(*) FROM sales a, sales b, sales c, sales d, sales e, sales f")
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ToolError, match="too big"):
        db.sql("SELECT length(zeroblob(100000000))")


def test_sql_through_the_tool_wrapper_returns_error_text(db):
    result = asyncio.run(Tool(db.sql).acall({"query": "DROP TABLE employees"}))
    assert result.error and result.content.startswith("Error: SQL error: not authorized")


def test_sql_on_user_script(tmp_path):
    script = tmp_path / "db.sql"
    script.write_text("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")
    assert SqlDatabase(script).sql("SELECT SUM(x) AS s FROM t") == "s\n3"
    with pytest.raises(ValueError, match="not found"):
        SqlDatabase(tmp_path / "missing.db")


# -- search and lookup --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus():
    return Corpus()


def test_search_ranks_the_relevant_document_first(corpus):
    first = corpus.search("tidal clock").splitlines()[0]
    assert first.startswith("[tidal-clock] Tidal clock:")
    assert len(corpus.search("Oldenkamp", k=2).splitlines()) == 2
    assert corpus.search("zzzz qqqq").startswith("No documents match")


def test_search_refuses_bad_k_and_empty_queries(corpus):
    with pytest.raises(ToolError, match="k must be"):
        corpus.search("clock", k=0)
    with pytest.raises(ToolError, match="no searchable words"):
        corpus.search("?? the of")


def test_lookup_returns_the_full_document(corpus):
    text = corpus.lookup("oldenkamp-clockworks")
    assert text.startswith("[oldenkamp-clockworks] Oldenkamp Clockworks\n") and "1861" in text
    assert corpus.lookup("[oldenkamp-clockworks]") == text  # ids pasted with their brackets
    with pytest.raises(ToolError, match="no document"):
        corpus.lookup("../../etc/passwd")


def test_user_corpus_rows_are_checked():
    docs = Corpus([{"id": "a", "title": "Alpha", "text": "The alpha document."}])
    assert docs.search("alpha").startswith("[a] Alpha")
    with pytest.raises(ValueError, match="duplicate"):
        Corpus([{"id": "a", "title": "A", "text": "x"}, {"id": "a", "title": "B", "text": "y"}])
    with pytest.raises(ValueError, match="string fields"):
        Corpus([{"id": "a", "title": "A"}])
