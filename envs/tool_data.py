"""The data-backed tools: ``search``/``lookup`` over a document corpus (BM25) and read-only ``sql``."""

from __future__ import annotations

import atexit
import functools
import hashlib
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .datasets import load_rows
from .tools import ToolError

_TOKEN = re.compile(r"[a-z0-9]+")
# Question words would otherwise favour documents that merely share them.
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "how",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "the",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "with",
    ]
)


def _tokens(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def _stem(token: str) -> str:
    # Plural "s" only: "boilers" finds "boiler"; real stemmers are a dependency this corpus does not need.
    return token[:-1] if len(token) > 3 and token.endswith("s") and not token.endswith("ss") else token


_SHARED: dict[str | None, Corpus] = {}


class Corpus:
    """Documents ``{"id", "title", "text"}`` with the ``search`` (BM25) and ``lookup`` tools."""

    def __init__(
        self, docs: str | Path | Iterable[Mapping[str, Any]] | None = None, snippet_chars: int = 160
    ):
        from rank_bm25 import BM25Plus

        rows = load_rows(docs, "tool_corpus.jsonl")
        self.docs: dict[str, dict[str, str]] = {}
        for i, row in enumerate(rows):
            if not all(isinstance(row.get(k), str) for k in ("id", "title", "text")):
                raise ValueError(f"corpus document {i}: needs string fields id, title and text")
            if row["id"] in self.docs:
                raise ValueError(f"corpus document {row['id']!r}: duplicate id")
            self.docs[row["id"]] = {k: row[k] for k in ("id", "title", "text")}
        if not self.docs:
            raise ValueError("the corpus has no documents")
        self._order = list(self.docs)
        tokenized = [_tokens(f"{d['title']} {d['text']}") for d in self.docs.values()]
        self._vocab = [set(tokens) for tokens in tokenized]
        # BM25+ keeps every term's weight positive; Okapi's goes negative for a term in most of a small corpus.
        self._bm25 = BM25Plus(tokenized)
        self.snippet_chars = snippet_chars

    @classmethod
    def shared(cls, docs: str | Path | None = None) -> Corpus:
        """One read-only index per corpus file in a process, so a thousand envs do not build a thousand."""
        key = None if docs is None else str(docs)
        if key not in _SHARED:
            _SHARED[key] = cls(docs)
        return _SHARED[key]

    def search(self, query: str, k: int = 3) -> str:
        """Search the document collection (BM25 keyword ranking) and return the best matches with their ids.

        Args:
            query: Keywords to look for, e.g. "tidal clock inventor".
            k: How many results to return (1 to 10).
        """
        if not 1 <= k <= 10:
            raise ToolError("k must be from 1 to 10")
        terms = _tokens(query)
        if not terms:
            raise ToolError("the query has no searchable words")
        scores = self._bm25.get_scores(terms)
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        matching = [i for i in ranked if not self._vocab[i].isdisjoint(terms)]
        hits = [self.docs[self._order[i]] for i in matching[:k]]
        if not hits:
            return f"No documents match {query!r}."
        return "\n".join(f"[{d['id']}] {d['title']}: {self._snippet(d['text'])}" for d in hits)

    def lookup(self, doc_id: str) -> str:
        """Return the full text of one document by its id (ids appear in square brackets in search results).

        Args:
            doc_id: A document id from a search result, e.g. "tidal-clock".
        """
        doc = self.docs.get(doc_id.strip().strip("[]"))
        if doc is None:
            raise ToolError(f"no document with id {doc_id!r}; use search to find ids")
        return f"[{doc['id']}] {doc['title']}\n{doc['text']}"

    def _snippet(self, text: str) -> str:
        if len(text) <= self.snippet_chars:
            return text
        return text[: self.snippet_chars].rsplit(" ", 1)[0] + " ..."


# -- sql ------------------------------------------------------------------------------------------------
# Reading is all a query may do: a write, PRAGMA, ATTACH, recursive CTE, transaction, ... is denied.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION})
_BUILT: dict[str, Path] = {}
_BUILD_LOCK = threading.Lock()
_CACHE_DIR: list[Path] = []


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _database_file(script: str) -> Path:
    """A SQLite file built once per process from ``script`` (in a private temporary folder)."""
    key = hashlib.sha256(script.encode()).hexdigest()[:16]
    with _BUILD_LOCK:
        if key in _BUILT:
            return _BUILT[key]
        if not _CACHE_DIR:
            # Private to this process (mode 0700), so nobody else can swap the file under us.
            _CACHE_DIR.append(Path(tempfile.mkdtemp(prefix="aligngym-tooldb-")))
            atexit.register(shutil.rmtree, _CACHE_DIR[0], True)
        path = _CACHE_DIR[0] / f"{key}.sqlite"
        path.unlink(missing_ok=True)  # left half-built by a script that failed earlier
        conn = sqlite3.connect(path)
        try:
            conn.executescript(script)
            conn.commit()
        finally:
            conn.close()
        _BUILT[key] = path
        return path


class SqlDatabase:
    """A SQLite database the ``sql`` tool queries read-only: opened ``mode=ro`` and behind an authorizer.

    ``source`` is a ``.sql`` script (built into a cached file), an existing SQLite file, or None for the
    shipped ``envs/data/tool_db.sql``.
    """

    def __init__(self, source: str | Path | None = None, max_rows: int = 50, timeout_s: float = 2.0):
        if source is None:
            script = resources.files("aligngym.envs").joinpath("data/tool_db.sql").read_text("utf-8")
            self.path = _database_file(script)
        elif str(source).endswith(".sql"):
            self.path = _database_file(Path(source).read_text("utf-8"))
        elif Path(source).is_file():
            self.path = Path(source)
        else:
            raise ValueError(f"database {str(source)!r} not found; pass a .sql script or a SQLite file")
        self.max_rows = max_rows
        self.timeout_s = timeout_s

    @property
    def uri(self) -> str:
        """The read-only ``file:`` URI every connection opens."""
        return f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.uri, uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")  # before the authorizer, which denies PRAGMA
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)  # bounds zeroblob/printf/replace sizes
        conn.set_authorizer(_authorize)
        deadline = time.monotonic() + self.timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        return conn

    @functools.cached_property
    def description(self) -> str:
        """One line per table, ``name(column, ...)``, for prompts (read once)."""
        conn = sqlite3.connect(self.uri, uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            lines = []
            for table in tables:
                cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table!r})")]
                lines.append(f"{table}({', '.join(cols)})")
        finally:
            conn.close()
        return "\n".join(lines)

    def sql(self, query: str) -> str:
        """Run one read-only SQLite query (a single SELECT) against the database and return the rows.

        Args:
            query: One SELECT statement, e.g. "SELECT name, salary FROM employees ORDER BY salary DESC LIMIT 3".
        """
        if not query.strip():
            raise ToolError("the query is empty")
        conn = self._connect()
        try:
            cursor = conn.execute(query)
            rows = cursor.fetchmany(self.max_rows + 1)
            columns = [c[0] for c in cursor.description or []]
        except (sqlite3.Error, sqlite3.Warning) as exc:
            # Python 3.11 reports "one statement at a time" as a Warning, later versions as an Error.
            message = str(exc)
            if "not authorized" in message:
                message += " (only read-only SELECT queries are allowed)"
            elif "interrupted" in message:
                message = f"the query ran longer than {self.timeout_s:g}s"
            raise ToolError(f"SQL error: {message}") from None
        finally:
            conn.close()
        if not columns:
            return "(no result)"
        lines = [" | ".join(columns)]
        lines += [" | ".join(_cell(v) for v in row) for row in rows[: self.max_rows]]
        if not rows:
            lines.append("(no rows)")
        elif len(rows) > self.max_rows:
            lines.append(f"... (only the first {self.max_rows} rows are shown)")
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= 200 else text[:200] + "..."
