"""``aligngym init NAME``: the files of a new, installable environment package.

The package declares its env as an entry point (see docs/env-packages.md), so ``pip install -e NAME`` is all
it takes for ``aligngym envs``, ``aligngym.make`` and ``gym.make`` to find it. The files are written from the
templates here, into a temporary directory renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from string import Template

#: The id the scaffolded env gets, in the package's own namespace.
ENV_NAME = "Guess-v0"

_NAME = re.compile(r"[a-z][a-z0-9_]*")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
version = "0.1.0"
description = "aligngym environments: $env_id"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["aligngym"]

[project.optional-dependencies]
test = ["pytest>=8"]

# aligngym finds these without importing the package: the name is the env id (in your own namespace), the
# value its class. Multi-agent (PettingZoo) envs go in the group "aligngym.multi_agent_envs" instead.
[project.entry-points."aligngym.envs"]
"$env_id" = "$name.env:GuessEnv"

[tool.setuptools]
packages = ["$name"]
"""

INIT = '''\
"""$name: aligngym environments ($env_id). Installing the package registers them; importing it is not needed."""
'''

ENV = '''\
"""$env_id: guess a seeded secret number, told "higher" or "lower" after each try."""

from __future__ import annotations

import re
from typing import Any

from aligngym.envs import StepResult, TextEnv

_INT = re.compile(r"[-+]?[0-9]+")
#: Longer digit strings are not guesses (and int() of a huge one is slow, or refused).
_MAX_DIGITS = 18


class GuessEnv(TextEnv):
    """Guess the secret integer in 1..high; each wrong guess is answered "Higher." or "Lower.".

    Reward components:
      - ``correct``: 1 on the turn the reply's one integer equals the secret, else 0. A reply with several
        integers is no guess at all: listing every number must not win.
      - ``format``: 1 if the reply is a bare integer, else 0.
    The reward of a turn is ``correct + format_weight * format``.
    """

    description = "Guess a seeded secret number, told higher or lower after each try."
    success_component = "correct"

    def __init__(
        self,
        high: int = 100,
        max_turns: int = 7,
        format_weight: float = 0.1,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if high < 2:
            raise ValueError(f"high must be >= 2, got {high}")
        self.high = high
        self.format_weight = format_weight
        self.secret = 0

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        # self.np_random is seeded by reset(seed=...): the same seed gives the same secret.
        self.secret = int(self.np_random.integers(1, self.high + 1))
        return f"I picked an integer from 1 to {self.high}. Guess it: reply with the number only.", {}

    def turn(self, action: str) -> StepResult:
        text = action.strip()
        found = _INT.findall(text)
        guess = int(found[0]) if len(found) == 1 and len(found[0]) <= _MAX_DIGITS else None
        correct = float(guess == self.secret)
        fmt = float(guess is not None and _INT.fullmatch(text) is not None)
        if guess is None:
            hint = "Reply with exactly one integer."
        else:
            hint = "Higher." if guess < self.secret else "Lower." if guess > self.secret else ""
        return StepResult(
            observation=hint,
            reward=correct + self.format_weight * fmt,
            terminated=bool(correct),
            components={"correct": correct, "format": fmt},
            info={"guess": guess},
        )
'''

TEST = '''\
"""$env_id passes aligngym's conformance check, and its grader pays for the secret only."""

from __future__ import annotations

import aligngym

ENV_ID = "$env_id"


def test_conformance():
    aligngym.check_conformance(ENV_ID)


def test_binary_search_finds_the_secret_in_seven_turns():
    env = aligngym.make(ENV_ID)
    env.reset(seed=0)
    low, high = 1, 100
    for _ in range(7):
        guess = (low + high) // 2
        hint, reward, terminated, _, info = env.step(str(guess))
        if terminated:
            assert info["reward_components"]["correct"] == 1.0 and reward > 1.0
            return
        low, high = (guess + 1, high) if hint == "Higher." else (low, guess - 1)
    raise AssertionError("binary search did not find the secret")


def test_listing_every_number_is_no_guess():
    env = aligngym.make(ENV_ID, high=5)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("1 2 3 4 5")
    assert (reward, terminated, info["reward_components"]["correct"]) == (0.0, False, 0.0)
'''

README = """\
# $name

An aligngym environment package: `$env_id`, guess a seeded secret number.

```bash
pip install -e .          # registers $env_id through the "aligngym.envs" entry point
aligngym envs             # lists it, with this package's name and version
python -m pytest tests    # aligngym's conformance check, and the grader's own tests
```

```python
import aligngym, gymnasium as gym

env = gym.make("$env_id")  # or aligngym.make("$env_id", high=10)
observation, info = env.reset(seed=0)
```

Add an environment: write its class (see `$name/env.py`; aligngym's `TextEnv` holds the chat, turn limit and
reward components), then a line under `[project.entry-points."aligngym.envs"]` in `pyproject.toml` with
its id (`$name/Name-v0`) and `module:Class`, reinstall, and add its id to the conformance test. Multi-agent
(PettingZoo) envs go under `[project.entry-points."aligngym.multi_agent_envs"]`. Every trajectory row records
this package's name and version (`env_package`, `env_package_version`).
"""

#: Relative path -> template.
FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "$name/__init__.py": INIT,
    "$name/env.py": ENV,
    "tests/test_conformance.py": TEST,
}


def check_name(name: str) -> None:
    """Raise ``ValueError`` (one line) unless ``name`` can be the package's import name and id namespace."""
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(
            f"package name {name!r} must be lowercase letters, digits and '_', starting with a letter"
        )
    if name.startswith("aligngym"):
        raise ValueError(f"package name {name!r}: the 'aligngym' namespace is reserved for built-in envs")
    if name in sys.stdlib_module_names or name == "tests":
        raise ValueError(f"package name {name!r} is a standard-library module name; pick another")


def _check_free(name: str) -> None:
    """Raise ``ValueError`` when an importable module has ``name`` already (one would shadow the other)."""
    from importlib.util import find_spec

    if find_spec(name) is not None:  # finds, never imports: a top-level name
        raise ValueError(f"package name {name!r} is already importable here (another package has it)")


def render(name: str) -> dict[str, str]:
    """Relative path -> contents of every file of package ``name``."""
    values = {"name": name, "env_id": f"{name}/{ENV_NAME}"}
    return {
        Template(path).substitute(values): Template(text).substitute(values) for path, text in FILES.items()
    }


def scaffold(name: str, target: Path) -> list[Path]:
    """Write package ``name`` into the new directory ``target``; returns the files written.

    Raises ``ValueError`` for a bad name and ``FileExistsError`` when ``target`` exists, writing nothing.
    """
    check_name(name)
    if target.exists() or target.is_symlink():
        raise FileExistsError(
            f"{str(target)!r} already exists; aligngym init never writes into an existing path"
        )
    _check_free(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        for rel, text in render(name).items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a package directory is not
        os.rename(staging, target)  # refuses a target that appeared meanwhile (unless an empty dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(target / rel for rel in render(name))
