"""Environment packages: ids that installed distributions declare as entry points, found without an import.

A distribution declares ``"namespace/Name-v0" = "module:Class"`` in the ``aligngym.envs`` group (single-agent)
or ``aligngym.multi_agent_envs`` (PettingZoo). ``scan`` reads those declarations from the ``entry_points.txt``
of every distribution on ``sys.path`` (a few milliseconds; ``importlib.metadata`` alone costs more to import
than the whole scan) and checks them; no module of the distribution is imported before its env is made.
See docs/env-packages.md.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import NamedTuple

#: Entry-point group -> whether its envs are multi-agent.
GROUPS = {"aligngym.envs": False, "aligngym.multi_agent_envs": True}
#: Namespaces no package may declare (compared case-insensitively): a built-in id, or one that reads like it,
#: must never run a package's code, or a package could replace a grader and forge rewards.
RESERVED_PREFIX = "aligngym"

# ASCII only: a look-alike id (Cyrillic "а", full-width "/") must not pass for another one.
_ID = re.compile(r"[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+")
_VALUE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


class EntryPointEnv(NamedTuple):
    """One env id a distribution declares: where its class is, and which package (name, version) says so."""

    id: str
    value: str
    multi_agent: bool
    package: str
    version: str

    def __str__(self) -> str:
        return f"entry point {self.id!r} = {self.value!r} of package {self.package} {self.version}"


class ScanResult(NamedTuple):
    """The envs declared on the path, and one line per declaration that was refused."""

    envs: list[EntryPointEnv]
    #: (id, one line saying which package declared it and why it was refused)
    problems: list[tuple[str, str]]


def _normalize(name: str) -> str:
    # PEP 503 (runs of "-", "_", "." are one "-"), without a regex: it runs for every distribution installed.
    return "-".join(filter(None, name.lower().replace("_", "-").replace(".", "-").split("-")))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The ``[group]`` -> ``name = value`` pairs of an ``entry_points.txt`` (the format importlib reads)."""
    found: dict[str, list[tuple[str, str]]] = {}
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif group is not None:
            name, _, value = line.partition("=")
            found.setdefault(group, []).append((name.strip(), value.strip()))
    return found


def _name_version(meta_dir: str, dir_name: str) -> tuple[str, str]:
    """The distribution's ``Name`` and ``Version`` headers (else what its directory name says)."""
    headers: dict[str, str] = {}
    for file in ("METADATA", "PKG-INFO"):
        text = _read(os.path.join(meta_dir, file))
        if text is None:
            continue
        for line in text.splitlines():
            if not line.strip():
                break  # the headers end at the first blank line; the description follows
            key, _, value = line.partition(":")
            headers.setdefault(key.strip().lower(), value.strip())
        break
    stem = dir_name.rsplit(".", 1)[0]
    guess_name, _, guess_version = stem.partition("-")
    return headers.get("name", guess_name), headers.get("version", guess_version.split("-")[0])


def _meta_dirs(paths: list[str]) -> list[tuple[str, str]]:
    """``(path, dir name)`` of each distribution's metadata, the first copy of a name on the path winning."""
    seen: set[str] = set()
    found = []
    for entry in paths:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # a zip file or a missing directory: nothing declared there is read
            continue
        folder = (entry or ".") + os.sep
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                key = _normalize(name.rpartition(".")[0].partition("-")[0])
                if key not in seen:  # as importlib.metadata does: a shadowed older copy declares nothing
                    seen.add(key)
                    found.append((folder + name, name))
    return found


def _why_refused(ep: EntryPointEnv, taken: set[str]) -> str | None:
    if not _ID.fullmatch(ep.id):
        return "an id must be ASCII 'namespace/Name-v0' (letters, digits, '_', '-', '.')"
    if ep.id.split("/")[0].lower().startswith(RESERVED_PREFIX):
        return f"the namespace {ep.id.split('/')[0]!r} is reserved for aligngym's built-in environments"
    if not _VALUE.fullmatch(ep.value):
        return "the value must be 'module:Class' (or 'module:factory')"
    if ep.id in taken:
        return "that id is already registered by another environment"
    return None


def scan(paths: list[str] | None = None, taken: set[str] | frozenset[str] = frozenset()) -> ScanResult:
    """Every env declared by a distribution on ``paths`` (default ``sys.path``), checked; none is imported.

    Refused: a malformed id or value, a reserved namespace, an id in ``taken`` (registered already), and an id
    two packages declare (neither wins: which one runs must not depend on install order).
    """
    declared: list[EntryPointEnv] = []
    problems: list[tuple[str, str]] = []
    taken = set(taken)
    for meta_dir, dir_name in _meta_dirs(sys.path if paths is None else paths):
        text = _read(meta_dir + os.sep + "entry_points.txt")
        if not text or "[aligngym." not in text:
            continue
        sections = _sections(text)
        if not any(group in sections for group in GROUPS):
            continue
        package, version = _name_version(meta_dir, dir_name)
        for group, multi_agent in GROUPS.items():
            for name, value in sections.get(group, []):
                ep = EntryPointEnv(name, value, multi_agent, package, version)
                why = _why_refused(ep, taken)
                if why:
                    problems.append((name, f"ignoring {ep}: {why}"))
                else:
                    declared.append(ep)
    claims: dict[str, list[EntryPointEnv]] = {}
    for ep in declared:
        claims.setdefault(ep.id, []).append(ep)
    envs = []
    for env_id, eps in claims.items():
        if len(eps) == 1:
            envs.append(eps[0])
            continue
        who = ", ".join(f"{ep.package} {ep.version}" for ep in eps)
        problems.append((env_id, f"ignoring entry point {env_id!r}: declared more than once (by {who})"))
    return ScanResult(envs, problems)


@functools.cache
def _top_level_owners() -> dict[str, tuple[str, str]]:
    """Import name -> (distribution, version), from each distribution's declared ``top_level.txt``."""
    from importlib import metadata

    owners: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        try:
            tops = (dist.read_text("top_level.txt") or "").split()
            owner = (dist.metadata["Name"] or "", dist.version or "") if tops else ("", "")
        except Exception:  # one broken distribution must not cost a row its episode
            continue
        for top in tops:
            owners.setdefault(top, owner)
    return owners


@functools.cache
def distribution_of(module: str) -> tuple[str, str]:
    """``(name, version)`` of the installed distribution that provides ``module``; ``("", "")`` if none does.

    Looks at the distributions' declared top-level packages, then at one named like the package (wheels
    built without ``top_level.txt``); ``importlib.metadata.packages_distributions`` would also read every
    ``RECORD``, half a second here.
    """
    from importlib import metadata

    top = module.partition(".")[0]
    if top in ("__main__", "builtins", ""):
        return "", ""
    owner = _top_level_owners().get(top)
    if owner:
        return owner
    try:
        dist = metadata.distribution(top)
        return dist.metadata["Name"] or top, dist.version or ""
    except Exception:  # none by that name (PackageNotFoundError), or its metadata does not read
        return "", ""
