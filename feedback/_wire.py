"""Plain data between the grader's two processes: a strict codec and length-prefixed JSON frames.

Used by the tester (trusted) and the candidate (the solution's process); see ``_harness.py``. Containers are
tagged arrays, so a str is never mistaken for one and a tuple stays a tuple.
"""

import json
import os
import select
import time

MAX_MESSAGE = 16 << 20  # bytes of one message from the candidate; more is a broken candidate
MAX_DEPTH = 100


def encode(value, depth=0):
    """A JSON-able form of a plain value; containers are tagged arrays, so a str is never mistaken for one."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -(1 << 53) < value < 1 << 53 else ["I", format(value, "x")]  # hex: no digit limit
    if depth > MAX_DEPTH:
        raise ValueError("the value is nested too deeply")
    if kind is complex:
        return ["C", value.real, value.imag]
    if kind is bytes:
        return ["B", value.hex()]
    if kind is dict:
        return ["D", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    tag = {list: "L", tuple: "T", set: "S", frozenset: "F"}.get(kind)
    if tag is None:
        raise TypeError(
            f"a {kind.__name__} object crossed to the tests: only plain values count "
            "(None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)"
        )
    return [tag, [encode(x, depth + 1) for x in value]]


def decode(data, depth=0):
    """The value ``encode`` gave ``data`` for; anything malformed raises ``ValueError``."""
    kind = type(data)
    if data is None or kind is bool or kind is str or kind is int or kind is float:
        return data
    if kind is not list or len(data) < 2 or type(data[0]) is not str or depth > MAX_DEPTH:
        raise ValueError("malformed value from the solution")
    tag, body = data[0], data[1]
    if tag == "I" and type(body) is str:
        return int(body, 16)
    if tag == "C" and len(data) == 3 and all(type(x) in (int, float) for x in data[1:]):
        return complex(data[1], data[2])
    if tag == "B" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError("malformed value from the solution")
    if tag == "D":
        pairs = [p for p in body if type(p) is list and len(p) == 2]
        if len(pairs) != len(body):
            raise ValueError("malformed dict from the solution")
        try:
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
        except TypeError:
            raise ValueError("unhashable dict key from the solution") from None
    items = [decode(x, depth + 1) for x in body]
    make = {"L": list, "T": tuple, "S": set, "F": frozenset}.get(tag)
    if make is None:
        raise ValueError("malformed value from the solution")
    try:
        return make(items)
    except TypeError:
        raise ValueError("unhashable set item from the solution") from None


def send(fd, message):
    data = json.dumps(message, separators=(",", ":")).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def recv(fd, deadline=None):
    """One framed message; None on end of file, a broken frame or (with ``deadline``) when time runs out."""
    head = _read_exactly(fd, 4, deadline)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    body = _read_exactly(fd, size, deadline) if size <= MAX_MESSAGE else None
    if body is None:
        return None
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return message if type(message) is dict else None


def _read_exactly(fd, size, deadline):
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return None
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def plain_json(value, separators=None, out=None):
    """JSON text of lists, str-keyed dicts and scalars, from primitives the solution cannot patch."""
    top, out = out is None, [] if out is None else out
    kind = type(value)
    if value is None or kind is bool:
        out.append("null" if value is None else "true" if value else "false")
    elif kind is int:
        out.append(int.__repr__(value))
    elif kind is float:
        out.append("NaN" if value != value else float.__repr__(value).replace("inf", "Infinity"))
    elif kind is str:
        out.append(escape(value))  # noqa: F821 - json's C escaper, bound by _sealed
    elif kind is list:
        out.append("[")
        for i, item in enumerate(value):
            out.append("," if i else "")
            plain_json(item, None, out)
        out.append("]")
    else:
        out.append("{")
        for i, key in enumerate(value):
            out.append("," if i else "")
            plain_json(key, None, out)
            out.append(":")
            plain_json(value[key], None, out)
        out.append("}")
    return "".join(out) if top else None
