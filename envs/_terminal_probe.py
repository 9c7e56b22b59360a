"""Terminal-v0's state probe: reads what a check needs out of the working directory and prints it.

Runs inside the sandbox as an isolated program (``python -I``, environment cleared) after every process the
agent started is gone. It executes nothing the agent wrote: paths are opened one component at a time without
following symlinks (nothing outside the working directory is read, no FIFO can block it), and git runs on a
private copy of the repository's refs and staged entries with a configuration of ours, so no hook, filter,
fsmonitor, pager, replace ref or setting the agent wrote takes part. The expected values never come here:
the host judges the facts printed (a Python literal: ``ast.literal_eval``). The host appends the call
``main(paths, git_commands, max_bytes)``. Only builtin and frozen modules are imported: a docker image's
standard library may have no bytecode, and compiling ``json``/``re`` on every check would cost 100 ms.
"""

import os
import stat
import sys

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_ENTRIES = 4096
MAX_GIT_FILES = 4096
GITLINK = b"160000 "
# Every setting a read-only git command could take from the repository, fixed; nothing is included.
GIT_CONFIG = """[core]
\trepositoryformatversion = 0
\tbare = false
\tfilemode = true
\tsymlinks = true
\tlogallrefupdates = false
\tfsmonitor = false
\tuntrackedCache = false
\tcommitGraph = false
\tmultiPackIndex = false
\thooksPath = /dev/null
\tpager = cat
[status]
\tshowUntrackedFiles = all
[diff]
\tignoreSubmodules = all
[log]
\tshowSignature = false
"""


def describe(path, max_bytes):
    """What ``path`` is: missing, blocked (a link or locked directory on the way), file, dir, link, other."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    fd = os.open(".", DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError:
                return {"type": _not_a_directory(part, fd)}
            os.close(fd)
            fd = next_fd
        if not parts:
            return _directory(os.dup(fd), os.fstat(fd))
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return {"type": "missing"}
        except OSError:  # EACCES: a directory the agent made unsearchable hides nothing as "absent"
            return {"type": "blocked"}
        if stat.S_ISREG(st.st_mode):
            return _file(parts[-1], fd, st, max_bytes)
        if stat.S_ISDIR(st.st_mode):
            try:
                return _directory(os.open(parts[-1], DIR_FLAGS, dir_fd=fd), st)
            except OSError:
                return {"type": "dir", "mode": stat.S_IMODE(st.st_mode)}
        return {"type": "link" if stat.S_ISLNK(st.st_mode) else "other", "mode": stat.S_IMODE(st.st_mode)}
    finally:
        os.close(fd)


def _not_a_directory(name, dir_fd):
    """ "missing" when nothing or a non-directory is there, "blocked" for a link or a locked directory."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:
        return "blocked"
    return "blocked" if stat.S_ISLNK(mode) or stat.S_ISDIR(mode) else "missing"


def _file(name, dir_fd, st, max_bytes):
    found = {"type": "file", "mode": stat.S_IMODE(st.st_mode)}
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return found  # unreadable: no content to match
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            data = _read(fd, max_bytes + 1)
            if len(data) <= max_bytes:
                found["data"] = data
    finally:
        os.close(fd)
    return found


def _directory(fd, st):
    found = {"type": "dir", "mode": stat.S_IMODE(st.st_mode)}
    try:
        names = os.listdir(fd)
    except OSError:
        return found
    finally:
        os.close(fd)
    if len(names) <= MAX_ENTRIES:
        found["entries"] = sorted(names)
    return found


def _read(fd, limit):
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# -- git ------------------------------------------------------------------------------------------------
def git_facts(commands, max_bytes):
    """Each command's exit status and stdout, run on a clean copy of ``.git``; exit None where none ran."""
    if not commands:
        return []
    scratch = "/tmp/aligngym-check-" + os.urandom(8).hex()  # a name no earlier run could have prepared
    try:
        os.mkdir(scratch, 0o700)
    except OSError:
        return [{"exit": None}] * len(commands)
    try:
        env = _shadow_repo(scratch)
        return [_git_fact(env, args, max_bytes) if env else {"exit": None} for args in commands]
    finally:
        _remove_tree(scratch)


def _git_fact(env, args, max_bytes):
    code, out = _git(args, env, max_bytes)
    return {"exit": code} if code is None else {"exit": code, "stdout": out}


def _shadow_repo(scratch):
    """A git dir in ``scratch`` with the repository's HEAD, refs and staged entries, and its environment."""
    try:
        if not stat.S_ISDIR(os.stat(".git", follow_symlinks=False).st_mode):
            return None
        shadow = scratch + "/git"
        os.makedirs(shadow + "/objects/info")
        _write(shadow + "/config", GIT_CONFIG.encode())
        # Objects are named by their hash, so reading them where they lie cannot mislead; nothing is copied.
        _write(shadow + "/objects/info/alternates", os.path.abspath(".git/objects").encode() + b"\n")
        git_fd = os.open(".git", DIR_FLAGS)
        try:
            for name in ("HEAD", "packed-refs"):
                _copy_file(git_fd, name, shadow + "/" + name)
            _copy_tree(git_fd, "refs", shadow + "/refs", [MAX_GIT_FILES])
            staged = _copy_file(git_fd, "index", scratch + "/index")
        finally:
            os.close(git_fd)
    except OSError:
        return None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",
        "GIT_DIR": shadow,
        "GIT_WORK_TREE": os.getcwd(),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    return env if not staged or _restage(env, scratch + "/index") else None


def _restage(env, index):
    """Rebuild the index from its staged entries alone: no stat data to trust, no flags, no extensions.

    A stale entry whose stat data matches a changed file, or an assume-unchanged / skip-worktree flag, would
    hide a change from ``git status``; a fresh index makes git compare contents. Gitlinks (submodules) are
    refused: git would run inside them, under their own configuration.
    """
    code, listed = _git(["ls-files", "--stage", "-z"], dict(env, GIT_INDEX_FILE=index), 1 << 26)
    if code != 0 or any(entry.startswith(GITLINK) for entry in listed.split(b"\0")):
        return False
    return _git(["update-index", "-z", "--index-info"], env, 0, stdin=listed)[0] == 0


def _git(args, env, max_bytes, stdin=None):
    """Run git: (exit status, stdout), or (None, b"") when it printed more than ``max_bytes``."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe() if stdin is not None else (os.open(os.devnull, os.O_RDONLY), None)
    null = os.open(os.devnull, os.O_WRONLY)
    actions = [
        (os.POSIX_SPAWN_DUP2, in_r, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, null, 2),
    ]
    try:
        pid = os.posix_spawnp("git", ["git", *args], env, file_actions=actions)
    finally:
        for fd in (in_r, out_w, null):
            os.close(fd)
    if in_w is not None:
        with os.fdopen(in_w, "wb") as f:  # update-index prints nothing, so this cannot deadlock
            f.write(stdin)
    with os.fdopen(out_r, "rb") as f:
        out = _read(f.fileno(), max_bytes + 1)
    if len(out) > max_bytes:
        os.kill(pid, 9)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return (None, b"") if len(out) > max_bytes else (code, out)


def _write(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _copy_file(dir_fd, name, dest):
    """Copy the regular file ``name`` (never a link or FIFO); False when there is none."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        _write(dest, _read(fd, 1 << 26))
    finally:
        os.close(fd)
    return True


def _copy_tree(dir_fd, name, dest, budget):
    """Copy directories and regular files under ``name``, skipping links and anything else."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    try:
        os.makedirs(dest, exist_ok=True)
        for entry in os.scandir(fd):
            budget[0] -= 1
            if budget[0] < 0:
                raise OSError("too many refs")
            if entry.is_dir(follow_symlinks=False):
                _copy_tree(fd, entry.name, dest + "/" + entry.name, budget)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(fd, entry.name, dest + "/" + entry.name)
    finally:
        os.close(fd)


def _remove_tree(path):
    """Delete our scratch directory (only what we and git made there; nothing left must stop the probe)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files + dirs:
            try:
                (os.rmdir if name in dirs else os.unlink)(os.path.join(root, name))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def main(paths, commands, max_bytes):
    """Print the facts about ``paths`` (read first) and ``commands`` as one Python literal line."""
    facts = {
        "paths": {path: describe(path, max_bytes) for path in paths},
        "git": git_facts(commands, max_bytes),
    }
    sys.stdout.write(repr(facts) + "\n")
