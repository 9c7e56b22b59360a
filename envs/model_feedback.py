"""Model feedback as environments: a prompt from a task list, the reward from a ``Feedback``.

* ``aligngym/RewardModel-v0``: reward = a learned reward model's score, minus an optional length penalty.
* ``aligngym/Judge-v0``: reward = an LLM judge's normalised score against a constitution.
* ``aligngym/Verifier-v0``: reward = 1 if the final answer is mathematically equal to the gold answer.
* ``aligngym/CritiqueRefine-v0``: answer, read a critique, revise; reward = the revision's improvement.

:class:`FeedbackEnv` owns the shared loop (pick a task, score the answer with a feedback, end the episode), so
each environment only says where its tasks and feedback come from and how the score becomes a reward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from aligngym.agents.factory import resolve_agent
from aligngym.feedback.base import Feedback, FeedbackResult
from aligngym.feedback.critic import Critic
from aligngym.feedback.judge import Judge
from aligngym.feedback.reward_model import RewardModel
from aligngym.feedback.verifier import Verifier

from .base import StepResult, TextEnv, rng_choice_index, run_sync
from .datasets import load_rows

TaskSource = str | Path | Sequence[str | Mapping[str, Any]] | None
ANSWER_FORMAT = "End your response with 'Answer: <answer>'."
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jo", "Kofi", "Lena")


def resolve_owned(spec: Any) -> tuple[Any, list[Any]]:
    """``resolve_agent(spec)`` (None = scripted) and, if it was built here from a name or dict, ``[agent]``."""
    agent = resolve_agent(spec)
    return agent, [agent] if agent is not None and isinstance(spec, str | dict) else []


@dataclass(frozen=True)
class Task:
    """A prompt, with a gold answer where the task has one."""

    id: str
    prompt: str
    answer: str | None = None


def load_tasks(
    source: TaskSource, shipped: str = "feedback_prompts.jsonl", need_answer: bool = False
) -> list[Task]:
    """Tasks from strings or ``{"prompt", "answer"?, "id"?}`` rows, a JSONL path, or (None) a shipped file."""
    rows = load_rows(source, shipped)
    tasks = []
    for i, row in enumerate(rows):
        row = {"prompt": row} if isinstance(row, str) else row
        prompt = row.get("prompt") if isinstance(row, Mapping) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"task {i}: needs a non-empty 'prompt' string, got {row!r}")
        answer = row.get("answer")
        if need_answer and answer is None:
            raise ValueError(f"task {row.get('id', i)!r}: needs an 'answer'")
        tasks.append(Task(str(row.get("id", f"task-{i}")), prompt, None if answer is None else str(answer)))
    if not tasks:
        raise ValueError("no tasks given")
    if len({t.id for t in tasks}) != len(tasks):
        raise ValueError("task ids must be unique")
    return tasks


# -- the seeded maths generator -----------------------------------------------------------------------
def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _arithmetic(rng: np.random.Generator) -> tuple[str, str]:
    terms = [str(int(x)) for x in rng.integers(1, 20, size=int(rng.integers(3, 5)))]
    ops = [str(rng.choice(["+", "-", "*"])) for _ in terms[1:]]
    expr = terms[0] + "".join(f" {op} {t}" for op, t in zip(ops, terms[1:], strict=True))
    # eval() of a string built above from digits and + - * only; Python's precedence is the intended one.
    return f"Compute {expr}.", str(eval(expr))


def _linear(rng: np.random.Generator) -> tuple[str, str]:
    x, a, b = int(rng.integers(-12, 13)), int(rng.integers(2, 10)), int(rng.integers(1, 30))
    sign = "+" if rng.random() < 0.5 else "-"
    c = a * x + b if sign == "+" else a * x - b
    return f"Solve for x: {a}x {sign} {b} = {c}.", str(x)


def _fraction(rng: np.random.Generator) -> tuple[str, str]:
    p, q = (Fraction(int(rng.integers(1, d)), d) for d in rng.integers(2, 10, size=2).tolist())
    op = "+" if rng.random() < 0.5 or p == q else "-"  # p - p = 0 would be a give-away
    value = p + q if op == "+" else p - q
    return f"What is {p} {op} {q}? Give the exact value as a fraction.", _fraction_text(value)


def _word_problem(rng: np.random.Generator) -> tuple[str, str]:
    name = _NAMES[int(rng.integers(0, len(_NAMES)))]
    a, b, c = (int(x) for x in rng.integers(2, 15, size=3))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        text = f"{name} has {a} apples and buys {b} bags with {c} apples each. How many apples does {name} have now?"
        return text, str(a + b * c)
    if kind == 1:
        return f"A train travels {a * 10} km per hour for {b} hours. How many km does it travel?", str(
            a * 10 * b
        )
    if kind == 2:
        total = a + b + c + int(rng.integers(0, 20))
        text = f"{name} had {total} dollars, spent {a} on lunch and {b} on a book. How many dollars are left?"
        return text, str(total - a - b)
    return f"{name} reads {a} pages a day. How many days does {name} need for a {a * b}-page book?", str(b)


def math_tasks(count: int = 600, seed: int = 0) -> list[Task]:
    """``count`` distinct maths tasks with gold answers: arithmetic, linear equations, fractions, word problems."""
    rng = np.random.default_rng(seed)
    makers = (_arithmetic, _linear, _fraction, _word_problem)
    seen: dict[str, str] = {}
    for _ in range(50 * count):  # bounded: the fraction family has only a few thousand distinct problems
        if len(seen) == count:
            break
        prompt, answer = makers[len(seen) % len(makers)](rng)
        seen.setdefault(f"{prompt} {ANSWER_FORMAT}", answer)
    else:
        raise ValueError(f"cannot generate {count} distinct maths tasks; ask for fewer")
    return [Task(f"math-{i:04d}", p, a) for i, (p, a) in enumerate(seen.items())]


# -- the shared environment ---------------------------------------------------------------------------
class FeedbackEnv(TextEnv):
    """One answer per episode to a task's prompt; the reward is ``feedback``'s score of it.

    The episode always ends after the answer, whatever ``max_turns`` is (it is accepted so every environment
    takes the same arguments). ``options={"task_id": ...}`` picks a task; otherwise the seed does. The
    feedback's rationale and info are in the step info (``rationale``, ``feedback``).
    """

    #: Name of the reward component that holds the feedback's score.
    component = "feedback"

    def __init__(
        self,
        tasks: list[Task],
        feedback: Feedback,
        max_turns: int = 1,
        system_prompt: str | None = None,
        render_mode: str | None = None,
        owned_agents: Sequence[Any] = (),
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        self.tasks = tasks
        self._by_id = {t.id: t for t in tasks}
        self.feedback = feedback
        self.task: Task | None = None
        self._owned_agents = list(owned_agents)  # agents built from specs for this env; close() closes them

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        task_id = (options or {}).get("task_id")
        if task_id is not None and str(task_id) not in self._by_id:
            raise ValueError(f"unknown task_id {task_id!r}")
        if task_id is None:
            self.task = self.tasks[rng_choice_index(self.np_random, len(self.tasks))]
        else:
            self.task = self._by_id[str(task_id)]
        return self.task.prompt, {"task_id": self.task.id}

    def context(self) -> dict[str, Any]:
        """Task facts for the feedback: the gold answer where there is one."""
        return {} if self.task is None or self.task.answer is None else {"gold": self.task.answer}

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The chat as the policy first saw it: the system prompt, if any, and the task's prompt."""
        return self.messages[: 2 if self.system_prompt else 1]

    async def score(self, response: str) -> FeedbackResult:
        """The feedback's result for ``response`` as the answer to this episode's prompt."""
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        return await self.feedback.ascore(self.prompt_messages(), response, **self.context())

    def shape(self, result: FeedbackResult, response: str) -> tuple[float, dict[str, float]]:
        """The reward and its components from a feedback result (subclasses add penalties here)."""
        components = {self.component: float(result.score)}
        for key, value in result.components.items():
            components.setdefault(key, float(value))
        return float(result.score), components

    async def aturn(self, action: str) -> StepResult:
        result = await self.score(action)
        reward, components = self.shape(result, action)
        return StepResult("", reward, True, components, self._result_info(result))

    def _result_info(self, result: FeedbackResult) -> dict[str, Any]:
        return {"task_id": self.task.id, "rationale": result.rationale, "feedback": dict(result.info)}

    def close(self) -> None:
        while self._owned_agents:
            run_sync(self._owned_agents.pop().aclose())
        super().close()


class RewardModelEnv(FeedbackEnv):
    """Answer an instruction; reward = a reward model's score minus ``length_penalty`` per char over ``max_chars``.

    ``reward_model`` is ``"tiny"`` (built locally), a path to a sequence-classification model (loaded once per
    process and shared), or any ``Feedback``. Components: ``reward_model`` (the score) and ``length_penalty``
    (the non-positive amount added), so they sum to the reward.
    """

    description = "Instruction prompts scored by a learned reward model (optional length penalty)."
    component = "reward_model"

    def __init__(
        self,
        prompts: TaskSource = None,
        reward_model: str | Path | Feedback = "tiny",
        length_penalty: float = 0.0,
        max_chars: int = 1000,
        max_turns: int = 1,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        if length_penalty < 0 or max_chars < 0:
            raise ValueError("length_penalty and max_chars must be >= 0")
        feedback = reward_model if hasattr(reward_model, "ascore") else RewardModel.shared(str(reward_model))
        tasks = load_tasks(prompts)
        super().__init__(tasks, feedback, max_turns, system_prompt, render_mode)
        self.length_penalty, self.max_chars = float(length_penalty), int(max_chars)

    def shape(self, result: FeedbackResult, response: str) -> tuple[float, dict[str, float]]:
        penalty = -self.length_penalty * max(0, len(response) - self.max_chars)
        score = float(result.score)
        return score + penalty, {"reward_model": score, "length_penalty": penalty}


class JudgeEnv(FeedbackEnv):
    """Answer an instruction; reward = a judge's score in [0, 1] against a constitution.

    ``judge`` is an agent spec for ``resolve_agent`` (an Agent, a model name, ``{"model", "base_url"}``);
    ``None`` or ``"scripted"`` uses the scripted judge; a ready ``Judge`` (any Feedback) is used as it is.
    ``constitution`` is a principles file or list (default: the shipped constitution). Components: ``judge`` and ``judge_raw`` (on the judge's scale); a reply with no
    readable score gives 0 and ``info["feedback"]["parse_error"]``.
    """

    description = "Instruction prompts scored by an LLM judge against a constitution (scripted by default)."
    component = "judge"

    def __init__(
        self,
        prompts: TaskSource = None,
        judge: Any = None,
        constitution: Sequence[str] | str | Path | None = None,
        scale: tuple[float, float] = (1, 10),
        max_turns: int = 1,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        agent, owned = (None, []) if hasattr(judge, "ascore") else resolve_owned(judge)
        feedback = judge if hasattr(judge, "ascore") else Judge(agent, principles=constitution, scale=scale)
        super().__init__(load_tasks(prompts), feedback, max_turns, system_prompt, render_mode, owned)


class VerifierEnv(FeedbackEnv):
    """Solve a maths problem; reward = 1 if the final answer equals the gold answer as maths (``0.5`` = ``1/2``).

    The final answer is read by the shared extraction (``aligngym.feedback.answers``): the last ``\\boxed{}``,
    the text after the last ``Answer:`` / "the answer is", or else the last sentence with maths in it, so user
    tasks need no answer-format instruction. Several different final answers, or a denied one, score 0.
    ``tasks`` is ``None`` for the seeded generator (``num_tasks`` distinct problems: multi-step arithmetic,
    linear equations, fractions, word problems), or user rows ``{"prompt", "answer"}`` / a JSONL path.
    Component: ``correct``.
    """

    success_component = "correct"
    description = "Seeded maths problems with gold answers; binary reward from a math-equivalence verifier."
    component = "correct"

    def __init__(
        self,
        tasks: TaskSource = None,
        num_tasks: int = 600,
        max_turns: int = 1,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        pool = math_tasks(num_tasks) if tasks is None else load_tasks(tasks, need_answer=True)
        super().__init__(pool, Verifier(mode="math"), max_turns, system_prompt, render_mode)


class CritiqueRefineEnv(FeedbackEnv):
    """Two turns: answer; read a critique of the answer and revise it. Reward = score(revision) - score(draft).

    The draft turn's reward is 0 (its score is reported as ``draft_score``) and the revision turn pays the
    whole difference, so the episode reward is the improvement: +1 for fixing a wrong answer, -1 for breaking
    a right one under the default binary ``scorer`` (``Verifier(mode="math")``). ``critic`` is a ``Critic``
    (or any Feedback whose rationale is the critique), an agent spec for a model critic, or ``None`` for the
    scripted critic. ``tasks`` as in Verifier-v0. Components: ``draft_score``, ``revision_score``,
    ``improvement``. The episode always ends after the revision, whatever ``max_turns`` is.
    """

    description = "Answer, read a critique, revise: reward = score(revision) - score(draft) (self-refine)."
    component = "revision_score"

    def __init__(
        self,
        tasks: TaskSource = None,
        critic: Any = None,
        scorer: Feedback | None = None,
        num_tasks: int = 600,
        max_turns: int = 2,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        if max_turns < 2:
            raise ValueError(f"CritiqueRefine-v0 needs max_turns >= 2 (draft and revision), got {max_turns}")
        # The default scorer grades against gold answers, so then every task needs one.
        pool = math_tasks(num_tasks) if tasks is None else load_tasks(tasks, need_answer=scorer is None)
        agent, owned = (None, []) if hasattr(critic, "ascore") else resolve_owned(critic)
        super().__init__(pool, scorer or Verifier(mode="math"), max_turns, system_prompt, render_mode, owned)
        self.critic = critic if hasattr(critic, "ascore") else Critic(agent)
        self.draft_score = 0.0

    async def aturn(self, action: str) -> StepResult:
        result = await self.score(action)
        if self.turns == 1:
            self.draft_score = float(result.score)
            critique = await self.critic.ascore(self.prompt_messages(), action, **self.context())
            observation = (
                f"{critique.rationale or 'No critique.'}\n\nRevise your answer in light of this critique. "
                + (ANSWER_FORMAT if self.task.answer is not None else "")
            ).strip()
            info = {**self._result_info(result), "critique": critique.rationale}
            return StepResult(observation, 0.0, False, {"draft_score": self.draft_score}, info)
        revision = float(result.score)
        improvement = revision - self.draft_score
        components = {"draft_score": self.draft_score, "revision_score": revision, "improvement": improvement}
        return StepResult("", improvement, True, components, self._result_info(result))
