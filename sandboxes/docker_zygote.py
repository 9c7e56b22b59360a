"""The docker sandbox's fork server: a warm interpreter that forks a pristine copy of itself per Python run.

Runs inside the container (stdlib only, Python >= 3.8). The executor starts it as ``python3 <flags> -c
<this file>`` with the flags and environment of the runs it will serve (an isolated run's ``-I -B -u``, see
``sandboxes.base.isolated_request``) and a SOCK_SEQPACKET socket as fd 3. A request is JSON (``id``, the
program file, its environment and rlimits) with the run's stdin, stdout and stderr as SCM_RIGHTS. The server
forks C; C forks P and exits, so P is orphaned to the executor (pid 1), which reaps it, times it and kills it
exactly like a program it spawned itself; C first replies ``{"id", "pid"}`` (or ``{"id", "error"}``).

P takes the run's descriptors, a new session, the rlimits and the environment, and runs the program as
``__main__``. The server never runs program code, so every run starts from the state the server had after
its start; it is undumpable, so programs (same uid) can neither ptrace it nor reach its socket through
``/proc``; one that kills or stops it only costs the next run a fresh interpreter (the executor then spawns).
Unlike a fresh interpreter, the runs of one server share its hash seed, and a preloaded stdlib module is
already imported (an isolated run has neither its own nor the working directory on ``sys.path`` anyway).
"""

import array
import atexit
import builtins
import gc
import json
import os
import resource
import signal
import socket
import sys
import types

CTL_FD = 3
MAX_FDS = 4
# Imported once here, so runs start with them warm: the grading harness's modules and common stdlib ones.
PRELOAD = (
    "ast", "base64", "bisect", "collections", "ctypes", "dataclasses", "decimal", "fractions", "functools",
    "heapq", "itertools", "json", "marshal", "math", "operator", "random", "re", "select", "string",
    "struct", "threading", "time", "traceback", "typing",
)  # fmt: skip


def set_dumpable(flag, _libc=[]):  # noqa: B006  (the C library, loaded once and kept for every fork)
    """PR_SET_DUMPABLE: 0 for the server (no ptrace, no /proc/<pid>/fd by programs), 1 back for a run."""
    try:
        if not _libc:
            import ctypes

            _libc.append(ctypes.CDLL(None, use_errno=True))
        return _libc[0].prctl(4, flag, 0, 0, 0) == 0
    except Exception:
        return False


def exit_status(exc):
    """The exit status CPython gives an uncaught ``SystemExit`` (a non-integer code is printed)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except Exception:
        pass
    return 1


def flush_std(status):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = 120  # what CPython exits with when it cannot flush at exit
    return status


def execute(path):
    """Run the program file as ``__main__`` and exit as the interpreter would (minus module teardown)."""
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__, main.__cached__ = path, builtins, None
    sys.modules["__main__"] = main
    sys.argv[:] = [path]
    if hasattr(sys, "orig_argv"):  # as ``python3 <flags> <path>`` would have it, not ``-c <this file>``
        sys.orig_argv[:] = sys.orig_argv[:-2] + [path]
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec", dont_inherit=True)
        exec(code, main.__dict__)
        status = 0
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException:
        kind, value, trace = sys.exc_info()
        sys.excepthook(kind, value, trace.tb_next)  # from the program's frame on, as the interpreter shows it
        status = 1
    # Py_FinalizeEx's order: non-daemon threads, atexit handlers, flushing the standard streams.
    try:
        sys.modules["threading"]._shutdown()
    except BaseException:
        pass
    atexit._run_exitfuncs()
    os._exit(flush_std(status))


def become_program(job, fds, started):
    """In P: the run's session, priority, stdio, rlimits, directory and environment; then the program.

    ``started`` is closed once P leads its own session at the run's priority, so the executor, which hears of
    P only after that, can kill its group and never sees it at the server's priority. Never returns.
    """
    try:
        set_dumpable(1)  # first: an undumpable process's /proc/self files are root's, oom_score_adj too
        os.setsid()
        os.setpriority(os.PRIO_PROCESS, 0, job["nice"])
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # the OOM killer's first pick, never the executor
        os.close(started)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # our socket and the originals: nothing else leaks
        for name, value in job["limits"].items():
            limit = getattr(resource, "RLIMIT_" + name.upper())
            resource.setrlimit(limit, (value, value))
        # What exec would reset: Python ignores SIGPIPE and SIGXFSZ; the program gets the defaults back.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
    except BaseException:
        os._exit(127)
    execute(job["program"])


def receive(ctl):
    """(job, descriptors) of the next request, or None when the executor is gone."""
    fds = array.array("i")
    try:
        data, ancdata, _, _ = ctl.recvmsg(1 << 16, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except (ConnectionError, OSError):
        return None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(data), list(fds)


def fork_run(ctl, job, fds):
    """Fork C, which forks P (the run) and exits after replying P's pid; reap C."""
    try:
        child = os.fork()
    except OSError as exc:
        ctl.send(json.dumps({"id": job["id"], "error": str(exc)}).encode())
        return
    if child == 0:
        try:
            started, done = os.pipe()
            program = os.fork()
            if program == 0:
                os.close(started)
                become_program(job, fds, done)
            os.close(done)
            os.read(started, 1)  # EOF: P has its session (or died trying: the executor reaps it then)
            reply = {"id": job["id"], "pid": program}
        except BaseException as exc:
            reply = {"id": job["id"], "error": repr(exc)}
        try:
            ctl.send(json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def main():
    undumpable = set_dumpable(0)
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    os.chdir("/")
    gc.freeze()  # what the preloads made is never collected, so forks do not copy its pages to scan them
    ctl = socket.socket(fileno=CTL_FD)
    ctl.send(json.dumps({"ready": True, "undumpable": undumpable}).encode())
    while True:
        got = receive(ctl)
        if got is None:
            return
        job, fds = got
        try:
            fork_run(ctl, job, fds)
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    main()
