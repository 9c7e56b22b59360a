"""The candidate: the solution's own process in a grading run, answering the tester's calls (see ``_harness``).

It is forked before the tester reads anything secret (or, after a kill, started afresh with ``python -I``), so
it never holds the nonce, the tests or an expected value; it only ever sends plain data back.
"""

import builtins
import json
import os
import select
import signal
import sys
import time
import types

from aligngym.feedback._wire import (
    MAX_DEPTH,
    MAX_MESSAGE,
    _read_exactly,
    decode,
    encode,
    plain_json,
    recv,
    send,
)

SIGNALS = [
    getattr(signal, name)
    for name in [
        "SIGALRM",
        "SIGTERM",
        "SIGINT",
        "SIGHUP",
        "SIGUSR1",
        "SIGUSR2",
        "SIGPIPE",
        "SIGQUIT",
        "SIGVTALRM",
        "SIGPROF",
        "SIGTSTP",
    ]
    if hasattr(signal, name)
]


class CallTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise CallTimeout()


def candidate(rfd, wfd):
    """Load the solution and answer calls until the tester closes the pipe (never returns).

    The loop runs on copies of its functions sealed before the solution loads (see ``_sealed``), so an honest
    solution that patches builtins, ``os``, ``json`` or ``signal`` for its own purposes still gets graded."""
    signal.signal(signal.SIGALRM, _on_alarm)
    _sealed()["_serve"](rfd, wfd)


def _sealed():
    """Globals for the candidate's loop: a snapshot of builtins and of the few module functions it uses."""
    ns = types.SimpleNamespace
    scan = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner binds its parsers now
    sealed = {"__builtins__": dict(builtins.__dict__), "MAX_MESSAGE": MAX_MESSAGE, "MAX_DEPTH": MAX_DEPTH}
    sealed.update(CallTimeout=CallTimeout, builtins=builtins, escape=json.encoder.encode_basestring_ascii)
    sealed.update(os=ns(write=os.write, read=os.read, _exit=os._exit), time=ns(monotonic=time.monotonic))
    sealed.update(select=ns(select=select.select), json=ns(loads=lambda text: scan(text.decode(), 0)[0]))
    sealed.update(signal=ns(setitimer=signal.setitimer, ITIMER_REAL=signal.ITIMER_REAL))
    for function in (
        _serve,
        _timed,
        _exc_name,
        describe,
        _name_info,
        encode,
        decode,
        send,
        recv,
        _read_exactly,
    ):
        sealed[function.__name__] = types.FunctionType(
            function.__code__, sealed, function.__name__, function.__defaults__, function.__closure__
        )
    sealed["plain_json"] = types.FunctionType(plain_json.__code__, sealed, "plain_json", (None, None))
    sealed["json"].dumps = sealed["plain_json"]
    return sealed


def _serve(rfd, wfd):
    load = recv(rfd)
    if load is None:
        os._exit(0)
    limit = float(load["limit"])
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        code = compile(load["source"], "<solution>", "exec", dont_inherit=True)
    except BaseException as exc:
        send(wfd, {"load": "compile", "err": describe(exc)})
        os._exit(0)
    error = _timed(lambda: exec(code, ns), limit)
    if error is not None:
        send(wfd, {"load": "exec", "err": error[1], "to": error[0] == "timeout"})
        os._exit(0)
    send(wfd, {"names": {name: _name_info(ns, name) for name in load["names"]}})
    while True:
        request = recv(rfd)
        if request is None:
            os._exit(0)
        reply = {"n": request.get("n")}

        def call(request=request, reply=reply):
            function = ns.get(request["name"])
            if function is None:
                raise NameError(f"name {request['name']!r} is not defined")
            args, kwargs = decode(request["args"]), decode(request.get("kwargs", ["D", []]))
            reply["r"] = encode(function(*args, **kwargs))
            if request.get("back"):  # the containers passed in, as the call left them (in-place updates)
                reply["a"] = encode(args)

        error = _timed(call, limit)
        if error is not None:
            reply = {"n": reply["n"], **({"to": True} if error[0] == "timeout" else {"e": error})}
        try:
            send(wfd, reply)
        except BaseException:
            os._exit(1)


def _timed(thunk, limit):
    """None when ``thunk`` returned in time, else ("timeout", text) or (exception name, text)."""
    try:
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            thunk()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return None
    except CallTimeout:
        return ["timeout", f"TimeoutError: took longer than {limit}s"]
    except BaseException as exc:
        return [_exc_name(exc), describe(exc)]


def _exc_name(exc):
    try:
        return str(type(exc).__name__)
    except BaseException:
        return "Exception"


def describe(exc):
    try:
        message = str(exc)
    except BaseException:
        message = ""
    name = _exc_name(exc)
    return f"{name}: {message}"[:4000] if message else name


def _name_info(ns, name):
    if name not in ns:
        return ["missing"]
    value = ns[name]
    if type(value).__name__ == "module":
        return ["module", str(getattr(value, "__name__", ""))]
    if callable(value):
        return ["call"]
    try:
        return ["value", encode(value)]
    except (TypeError, ValueError):
        return ["call"]  # reported as not plain when the tests use it


def start_candidate():
    """Fork the candidate now, before anything secret is in this process; (pid, request fd, reply fd)."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _become_candidate(req_r, rep_w)
    os.close(req_r)
    os.close(rep_w)
    return pid, req_w, rep_r


def _become_candidate(rfd, wfd):
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the tester's stdin carries the nonce and the tests: never ours
        os.dup2(2, 1)  # the solution's prints go to stderr, away from the report channel
        keep = sorted({0, 1, 2, rfd, wfd})
        for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        candidate(rfd, wfd)
    finally:
        os._exit(1)


def respawn_candidate(program):
    """A fresh ``python -I`` as the next candidate (a fork would copy the secrets the tester now holds), fed
    ``program`` (the grading program's text, read by the tester before the solution ran) on stdin: the file
    on disk may have been rewritten by the solution since (docker's code directory is writable by its uid)."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    src_r, src_w = os.pipe()
    for fd in (req_r, rep_w):
        os.set_inheritable(fd, True)
    # stdin is the program; the tester's own stdin (the nonce and the tests) is never passed on
    actions = [(os.POSIX_SPAWN_DUP2, src_r, 0), (os.POSIX_SPAWN_DUP2, 2, 1)]
    argv = [sys.executable, "-I", "-", "candidate", str(req_r), str(rep_w)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    try:
        pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions)
    finally:
        for fd in (req_r, rep_w, src_r):
            os.close(fd)
    try:
        while program:
            program = program[os.write(src_w, program) :]
    except OSError:
        pass  # it died already: its first call will say so
    finally:
        os.close(src_w)
    return pid, req_w, rep_r
