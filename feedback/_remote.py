"""The tester's side of the pipe to the candidate: calls cross as plain data, failures as exceptions.

Part of the grading program (see ``_harness``); runs in the trusted tester, never in the solution's process.
"""

import builtins
import os
import select
import signal
import time

from aligngym.feedback._candidate import respawn_candidate
from aligngym.feedback._wire import decode, encode, recv, send

GRACE_S = 0.5  # how long past a call's limit the tester waits for the candidate's own timeout reply
MAX_RESPAWNS = 2  # fresh candidates after kills; then every later call fails at once
# Exceptions a candidate may raise into the tests by name; others arrive as CandidateError. Left out on purpose:
# StopIteration (map()/iterators would read it as "no more items": `all(map(f, xs))` would pass) and the
# AttributeError that hasattr()/getattr(default) turn into a value.
RAISABLE = frozenset(
    {
        "ValueError",
        "TypeError",
        "KeyError",
        "IndexError",
        "LookupError",
        "ZeroDivisionError",
        "ArithmeticError",
        "OverflowError",
        "NotImplementedError",
        "RuntimeError",
        "RecursionError",
        "AssertionError",
        "UnicodeError",
        "UnicodeDecodeError",
        "UnicodeEncodeError",
        "FileNotFoundError",
        "OSError",
        "NameError",
    }
)


class TestTimeout(BaseException):
    """A test ran out of time (a BaseException, so a test's own ``except Exception`` cannot swallow it)."""


class CandidateGone(BaseException):
    """The solution's process died or was killed; its calls fail from now on."""


class CandidateError(Exception):
    """The solution raised an exception the tests may not see under its own name."""


class Remote:
    """The tester's side of the pipe: calls a solution function, returns a decoded plain value."""

    def __init__(self, solution, names, limit, spawned, program):
        self.solution, self.names, self.limit, self.program = solution, names, limit, program
        self.pid, self.req, self.rep = spawned
        self.respawns, self.deadline, self.tainted, self.sent = 0, None, False, 0
        self.last = None  # (value,) the solution last returned in the current test
        self.info, self.load_error = self._load()

    def _load(self):
        try:
            send(self.req, {"source": self.solution, "names": self.names, "limit": self.limit})
        except OSError:
            return {}, ["exec", "the solution's process could not start", False]
        reply = recv(self.rep, time.monotonic() + self.limit + GRACE_S)
        if reply is None:
            self._kill()
            return {}, ["exec", f"TimeoutError: loading took longer than {self.limit}s", True]
        if "load" in reply:
            self._kill()
            return {}, [str(reply.get("load")), str(reply.get("err", ""))[:4000], reply.get("to") is True]
        info = reply.get("names")
        return (info if type(info) is dict else {}), None

    def _kill(self):
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        for fd in (self.req, self.rep):
            try:
                os.close(fd)
            except OSError:
                pass
        self.pid = None

    def call(self, name, args, kwargs=None):
        if self.pid is None:
            if self.respawns >= MAX_RESPAWNS:
                self.tainted = True
                raise CandidateGone("the solution's process was killed earlier (a timeout or a crash)")
            self.respawns += 1
            self.pid, self.req, self.rep = respawn_candidate(self.program)
            _, self.load_error = self._load()
            if self.load_error is not None:
                self.tainted = True
                raise CandidateGone(self.load_error[1])
        now = time.monotonic()
        limit = self.limit if self.deadline is None else min(self.limit, self.deadline - now)
        if limit <= 0:
            self.tainted = True
            raise TestTimeout()
        if select.select([self.rep], [], [], 0)[0]:  # a reply before its request: sent blind, or by a stray
            self._kill()
            self.tainted = True
            raise CandidateGone("the solution's process broke the protocol (it answered before being asked)")
        try:
            self.sent += 1
            back = any(type(a) in _MUTABLE for a in args)
            request = {"n": self.sent, "name": name, "args": encode(list(args)), "back": back}
            if kwargs:
                request["kwargs"] = encode(dict(kwargs))
            send(self.req, request)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}() was given a value that cannot cross to the solution: {exc}") from None
        except OSError:
            self._kill()
            self.tainted = True
            raise CandidateGone("the solution's process died") from None
        reply = recv(self.rep, now + limit + GRACE_S)
        if reply is not None and reply.get("n") != self.sent:
            reply = None  # an answer to another call (a stray thread?) breaks the protocol
        if reply is None:  # no answer in time, or a broken one: this candidate is done
            self._kill()
            self.tainted = True
            if time.monotonic() >= now + limit:
                raise TestTimeout()
            raise CandidateGone("the solution's process died or broke the protocol")
        if reply.get("to") is True:
            self.tainted = True
            raise TestTimeout()
        if "e" in reply:
            error = reply["e"] if type(reply["e"]) is list and len(reply["e"]) == 2 else ["Exception", ""]
            kind, text = str(error[0]), str(error[1])[:4000]
            message = text.partition(": ")[2] if text.startswith(kind + ":") else text
            cls = getattr(builtins, kind, None) if kind in RAISABLE else None
            error = cls(message) if cls is not None else CandidateError(text)
            error.from_solution = True  # its text is the solution's own: safe to show in redacted feedback
            raise error
        try:
            value = decode(reply.get("r"))
            after = decode(reply["a"]) if back and "a" in reply else None
        except (ValueError, RecursionError, OverflowError) as exc:
            raise TypeError(str(exc)) from None
        if type(after) is list and len(after) == len(args):
            _update_in_place(args, after)
        self.last = (value,)
        return value


_MUTABLE = (list, dict, set)


def _update_in_place(args, after):
    """Give the tests' own list/dict/set arguments the contents the call left in the solution's copies."""
    for given, changed in zip(args, after, strict=True):
        kind = type(given)
        if kind in _MUTABLE and type(changed) is kind:
            if kind is list:
                given[:] = changed
            else:
                given.clear()
                given.update(changed)


class Proxy:
    """Stands in for one solution function in the tests' namespace."""

    def __init__(self, remote, name):
        self._remote, self.__name__ = remote, name

    def __call__(self, *args, **kwargs):
        return self._remote.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<solution function {self.__name__}>"
