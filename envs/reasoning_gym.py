"""aligngym/ReasoningGym-v0: reasoning-gym's procedural tasks, graded by each dataset's own ``score_answer``.

reasoning-gym (an optional extra: ``pip install 'aligngym[reasoning-gym]'``) is imported when an env is built,
never by ``import aligngym``. Its scorers were written to measure models, not to stand up to a policy that
searches for what they pay, so this module is the wall between the two (docs/reasoning-gym.md): it reads one
answer from the reply, refuses answers that a scorer would run as code, never lets a scorer's exception, NaN or
out-of-range score through, and refuses datasets whose scorer pays a constant answer.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import math
import re
from typing import Any

from .base import StepResult, TextEnv

INSTALL_HINT = "pip install 'aligngym[reasoning-gym]'"
DEFAULT_DATASET = "chain_sum"
OPEN, CLOSE = "<answer>", "</answer>"
INSTRUCTIONS = (
    f"Think as long as you need, then give your final answer once, inside {OPEN}{CLOSE} tags, "
    f"e.g. {OPEN}your answer{CLOSE}. Only the text inside the tags is graded."
)
RETRY = f"Wrong. Try again: give your final answer once, inside {OPEN}{CLOSE} tags."

#: Datasets whose ``score_answer`` is no safe reward (reasoning-gym 0.1.25); refused unless
#: ``allow_unsafe_scorer=True``. Found by reading scorers and fuzzing all of them (docs/reasoning-gym.md).
UNSAFE_SCORERS: dict[str, str] = {
    "game_of_life_halting": "every non-empty answer scores 1.0 (it compares bool('False') with bool(answer))",
    "simple_integration": "the answer goes through sympy's parse_expr (Python eval: code execution, "
    "unbounded work), and two candidates side by side can score 1.0",
    "intermediate_integration": "the answer goes through sympy's parse_expr (Python eval: code execution, "
    "unbounded work)",
    "polynomial_multiplication": "the answer goes through sympy's parse_expr (Python eval: code execution, "
    "unbounded work)",
    "propositional_logic": "about a quarter of its tasks have contradictory premises, so that 'P ∧ ¬P' scores "
    "1.0 on them; and an answer with n distinct atoms costs 2^n evaluations (20 atoms: a minute)",
    "composite": "it mixes datasets whose scorers this env does not check one by one; use one env per dataset",
}
#: Scorers that ``eval()`` the answer in a fallback: an answer that is Python but not a literal is refused.
EVAL_SCORERS = frozenset({"string_insertion", "spiral_matrix", "binary_matrix", "n_queens"})
#: Scorers that hand the answer to sympy's ``parse_expr`` (``eval`` after a token rewrite): only digits,
#: + - * / and brackets may reach them, and only the task's own numbers (puzzle24 never checks which).
EXPRESSION_SCORERS = frozenset({"countdown", "puzzle24"})
_ARITHMETIC = re.compile(r"[0-9+\-*/() \t\n]*")
_INTEGER = re.compile(r"[0-9]+")


def _rg() -> Any:
    """The ``reasoning_gym`` module, or an ``ImportError`` saying how to install it."""
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(f"aligngym/ReasoningGym-v0 needs reasoning-gym: {INSTALL_HINT}") from None
    return reasoning_gym


def dataset_names() -> list[str]:
    """Every dataset name reasoning-gym registers, sorted."""
    return sorted(_rg().factory.DATASETS)


def build_dataset(name: str, config: dict[str, Any] | None, size: int, seed: int) -> Any:
    """reasoning-gym's dataset ``name`` with ``config``, or one ``ValueError`` naming what is wrong."""
    rg = _rg()
    if not isinstance(name, str) or name not in rg.factory.DATASETS:
        close = difflib.get_close_matches(str(name), list(rg.factory.DATASETS), n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?" if close else " (reasoning_gym.factory.DATASETS lists them)"
        )
        raise ValueError(f"unknown reasoning-gym dataset {name!r}{hint}")
    config = dict(config or {})
    fields = [f.name for f in dataclasses.fields(rg.factory.DATASETS[name][1])]
    for key in ("seed", "size"):
        if key in config:  # one source for each: the env's own arguments
            raise ValueError(
                f"config must not set {key!r}: use the env's {'dataset_seed' if key == 'seed' else key}"
            )
    for key in config:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            valid = ", ".join(f for f in fields if f not in ("seed", "size"))
            raise ValueError(f"unknown config key {key!r} for dataset {name!r}; {hint}valid keys: {valid}")
    try:
        return rg.create_dataset(name, seed=seed, size=size, **config)
    except Exception as exc:  # their validate() asserts; a wrong type fails anywhere inside
        raise ValueError(
            f"bad config for reasoning-gym dataset {name!r}: {type(exc).__name__}: {exc}"
        ) from None


def tagged_answer(text: str) -> tuple[str | None, str]:
    """The one answer inside ``<answer>`` tags, or None and why not (no tag, unbalanced, nested, a hedge).

    Linear in the reply's length (``str.find`` only): a huge reply costs one pass, not a regex backtrack.
    The same answer repeated is one answer; two different ones are a hedge and grade as none.
    """
    found: list[str] = []
    start = text.find(OPEN)
    while start >= 0:
        end = text.find(CLOSE, start + len(OPEN))
        if end < 0:
            return None, "an <answer> tag is never closed"
        body = text[start + len(OPEN) : end]
        if OPEN in body:
            return None, "nested <answer> tags"
        found.append(body.strip())
        start = text.find(OPEN, end + len(CLOSE))
    if not found:
        return None, "no <answer>...</answer> in the reply"
    if text.count(CLOSE) != len(found):
        return None, "unbalanced </answer> tags"
    if len(set(found)) > 1:
        return None, f"{len(set(found))} different answers (a hedge)"
    if not found[0]:
        return None, "the answer is empty"
    return found[0], ""


#: What ``eval`` may meet in an answer: literals and bare names (a lookup calls nothing). No calls, attributes,
#: subscripts, operators (``9**9**9`` alone runs for hours), comprehensions, lambdas or f-strings.
_INERT = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp,
          ast.USub, ast.UAdd)  # fmt: skip


def runs_as_code(answer: str) -> bool:
    """Whether ``eval(answer)`` could do more than build a literal or look a name up."""
    for variant in {answer, answer.strip(), answer.lstrip(" \t")}:  # eval strips leading spaces and tabs
        try:
            tree = ast.parse(variant, mode="eval")
        except SyntaxError:
            continue  # eval raises the same SyntaxError: nothing runs
        except Exception:  # too deep, NUL bytes: refuse rather than guess what eval would do
            return True
        if not all(isinstance(node, _INERT) for node in ast.walk(tree)):
            return True
    return False


def refusal(scorer: str, answer: str, entry: dict[str, Any]) -> str:
    """Why ``answer`` must not reach ``scorer``'s ``score_answer`` (it would run it, or misgrade it), or ``""``."""
    if scorer in EVAL_SCORERS and runs_as_code(answer):
        return f"{scorer}'s scorer would eval() this answer as Python code"
    if scorer in EXPRESSION_SCORERS:
        if not _ARITHMETIC.fullmatch(answer) or "**" in answer:
            return f"{scorer}'s scorer would run this answer through sympy: only digits, + - * / ( ) allowed"
        numbers = entry.get("metadata", {}).get("numbers", [])
        if sorted(int(n) for n in _INTEGER.findall(answer)) != sorted(numbers):
            return "the expression must use each of the task's numbers exactly once"
    return ""


def checked_score(dataset: Any, answer: str, entry: dict[str, Any]) -> tuple[float, bool, dict[str, Any]]:
    """``score_answer`` clipped to [0, 1], whether it was full credit (exactly 1.0), and what went wrong."""
    try:
        # A copy: a scorer that mutates the entry cannot change the next turn's grading.
        raw = dataset.score_answer(answer, copy.deepcopy(entry))
        value = float(raw)
    except Exception as exc:  # a scorer bug on a strange answer is a wrong answer, never a crashed episode
        return 0.0, False, {"scorer_error": f"{type(exc).__name__}: {exc}"[:300]}
    if not math.isfinite(value):
        return 0.0, False, {"score_out_of_range": repr(value)}
    notes = {} if 0.0 <= value <= 1.0 else {"score_out_of_range": repr(value)}
    # Exactly 1.0: scorers return the literal for full credit; a sum that rounds past 1
    # (spell_backward: 1.0000000000000002 for the answer plus any suffix) is partial credit gone wrong.
    return min(max(value, 0.0), 1.0), value == 1.0, notes


class ReasoningGymEnv(TextEnv):
    """One reasoning-gym task per episode; reward = correct (or the partial score) + format_weight * format.

    ``dataset`` names a reasoning-gym generator and ``config`` its settings (reasoning-gym's config fields,
    without ``seed``/``size``). Items are ``dataset[i]`` of a dataset built once with ``dataset_seed`` and
    ``size``; ``reset(seed=s)`` draws ``i`` from the episode's seeded generator, so a seed is always the same
    task. The question is the first user message, followed by how to answer: once, inside ``<answer>`` tags.

    Reward components:
      - ``correct``: 1 when reasoning-gym's ``score_answer`` gives the answer full credit (exactly 1.0), else 0.
      - ``score``: that score clipped to [0, 1] (0 without a usable answer). Paid instead of ``correct`` only
        with ``partial_credit=True``: several scorers pay hedges and near-misses (e.g. any answer containing
        the gold answer earns len(gold) / len(answer)), so partial credit is off by default.
      - ``format``: 1 when the reply holds exactly one ``<answer>...</answer>``, else 0.
    With ``max_turns > 1`` a wrong answer is told so (never the answer or the score) and may try again; a later
    turn pays only the improvement over what the episode already earned.
    """

    success_component = "correct"
    description = (
        "reasoning-gym's 100+ procedural reasoning tasks (dataset=NAME), scored by their own grader."
    )

    def __init__(
        self,
        dataset: str = DEFAULT_DATASET,
        config: dict[str, Any] | None = None,
        size: int = 10_000,
        dataset_seed: int = 0,
        max_turns: int = 1,
        partial_credit: bool = False,
        format_weight: float = 0.1,
        max_answer_chars: int = 8192,
        allow_unsafe_scorer: bool = False,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"config must be an object of the dataset's settings, got {config!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be >= 1, got {max_answer_chars}")
        if dataset in UNSAFE_SCORERS and not allow_unsafe_scorer:
            raise ValueError(
                f"reasoning-gym dataset {dataset!r} has an unsafe scorer: {UNSAFE_SCORERS[dataset]}; "
                "pass allow_unsafe_scorer=true to use it anyway (see docs/reasoning-gym.md)"
            )
        self.dataset_name = dataset
        self.dataset = build_dataset(dataset, config, size, dataset_seed)
        self.size = size
        self.partial_credit = partial_credit
        self.format_weight = format_weight
        self.max_answer_chars = max_answer_chars
        self.entry: dict[str, Any] = {}
        self.index = 0

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        self.index = int(self.np_random.integers(0, self.size))
        self.entry = self.dataset[self.index]
        # The gold answer stays in info, which reaches rows and never the policy's prompt.
        return f"{self.entry['question']}\n\n{INSTRUCTIONS}", self._gold_info()

    def _gold_info(self) -> dict[str, Any]:
        gold = self.entry.get("answer")
        return {
            "dataset": self.dataset_name,
            "index": self.index,
            "answer": None if gold is None else str(gold),
        }

    def turn(self, action: str) -> StepResult:
        answer, problem = tagged_answer(action)
        gold = self.entry.get("answer")
        # Long enough for any honest answer (twice the gold), short enough that no scorer chews on megabytes.
        limit = max(self.max_answer_chars, 2 * len(str(gold or "")))
        if answer is not None and len(answer) > limit:
            answer, problem = None, f"the answer is longer than {limit} characters"
        if answer is not None:
            problem = refusal(self.dataset_name, answer, self.entry)
        notes: dict[str, Any] = {}
        score, full = 0.0, False
        if answer is not None and not problem:
            score, full, notes = checked_score(self.dataset, answer, self.entry)
        correct = float(full)
        fmt = float(answer is not None and action.count(OPEN) == 1)
        reward = (score if self.partial_credit else correct) + self.format_weight * fmt
        if self.turns > 1:
            reward -= self.episode_reward  # later turns pay only the improvement
        info = {**self._gold_info(), "score": score, **notes}
        if problem:
            info["not_graded"] = problem
        return StepResult(
            observation="" if full else RETRY,
            reward=reward,
            terminated=full,
            components={"correct": correct, "score": score, "format": fmt},
            info=info,
        )
