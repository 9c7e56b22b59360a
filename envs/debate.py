"""aligngym/Debate-v0: multi-agent debate (Du et al. 2023) with per-agent rewards and a majority vote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngym.feedback.answers import (
    answers_agree,
    is_number,
    majority,
    parse_choice,
    parse_number,
    parse_short,
    text_agree,
)

from .datasets import load_rows
from .multi_agent import MultiAgentTextEnv, RoundResult


@dataclass(frozen=True)
class Question:
    """A question with a gold answer: ``kind`` is ``mc`` (letter), ``number`` or ``short`` (free text)."""

    id: str
    question: str
    answer: str
    kind: str = "short"
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    @classmethod
    def from_row(cls, row: dict[str, Any], index: int = 0) -> Question:
        """Validate a task row; a malformed row is a ``ValueError`` naming it."""
        name = row.get("id", f"row {index}")
        if not isinstance(row.get("question"), str) or "answer" not in row:
            raise ValueError(f"debate task {name!r}: needs 'question' (str) and 'answer'")
        answer = str(row["answer"]).strip()
        choices = tuple(row.get("choices") or ())
        kind = "mc" if choices else ("number" if is_number(answer) else "short")
        if kind == "mc" and answer.upper() not in "ABCD"[: len(choices)]:
            raise ValueError(f"debate task {name!r}: answer must be a choice letter, got {answer!r}")
        return cls(
            str(name),
            row["question"],
            answer.upper() if kind == "mc" else answer,
            kind,
            choices,
            tuple(str(a) for a in row.get("aliases") or ()),
        )

    def format_hint(self) -> str:
        """How the answer must be stated, in the words Du et al. use."""
        if self.kind == "mc":
            return "Explain your answer, putting the answer in the form (X) at the end."
        if self.kind == "number":
            return "Make sure to state your answer as a single number at the end of your response."
        return "End your response with 'Answer: <your answer>'."

    def prompt(self) -> str:
        """The question as the first message."""
        if self.kind == "mc":
            options = "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(self.choices))
            return f"{self.question}\n{options}\n{self.format_hint()}"
        return f"{self.question} {self.format_hint()}"

    def extract(self, text: str) -> str | None:
        """The answer a response commits to, in canonical form (for voting and grading).

        Numbers use the shared final-answer extraction (``aligngym.feedback.answers``): the final stated
        number, none if the final statement lists several or denies one.
        """
        if self.kind == "mc":
            return parse_choice(text)
        if self.kind == "number":
            return parse_number(text)
        return parse_short(text) or None

    def is_correct(self, answer: str | None) -> bool:
        """Whether a canonical answer matches the gold answer (or an alias)."""
        if answer is None:
            return False
        if self.kind == "number":
            return answers_agree(answer, self.answer)
        if self.kind == "mc":
            return answer == self.answer
        # The gold phrase (or an alias) with at most filler words around it: "Paris London" is no answer.
        return text_agree(answer, (self.answer, *self.aliases))


def arithmetic_question(rng) -> Question:
    """Du et al.'s arithmetic task: ``a+b*c+d-e*f`` with operands 0..29."""
    a, b, c, d, e, f = (int(x) for x in rng.integers(0, 30, size=6))
    value = a + b * c + d - e * f
    text = f"What is the result of {a}+{b}*{c}+{d}-{e}*{f}?"
    return Question(id=f"arith-{a}-{b}-{c}-{d}-{e}-{f}", question=text, answer=str(value), kind="number")


def load_questions(tasks: str | Path | list[dict[str, Any]]) -> list[Question]:
    """User rows, a JSONL path, or ``"questions"`` for the shipped set."""
    rows = load_rows(tasks, "debate_questions.jsonl", names=("questions",))
    if not rows:
        raise ValueError("no debate tasks given")
    return [Question.from_row(row, i) for i, row in enumerate(rows)]


class DebateEnv(MultiAgentTextEnv):
    """N agents answer a question, then for ``rounds`` rounds each reads the others' latest answers and revises.

    After the last round the final answers are put to a majority vote. Per-agent reward (given at the end):
    1 if that agent's own final answer is correct. Components: ``correct`` and ``majority_correct``; the
    episode info records the gold answer, every final answer, the majority answer and whether it was right.
    ``rounds=2`` means an initial answer plus two revisions (Du et al. count the initial answer as a round,
    so their "3 rounds" is ``rounds=2`` here). ``tasks`` is ``"arithmetic"`` (seeded generator),
    ``"questions"`` (shipped questions with gold answers), a list of rows or a JSONL path.
    """

    success_component = "correct"
    description = "Multi-agent debate (Du et al. 2023): answer, read the others, revise; majority vote."

    def __init__(
        self,
        num_agents: int = 3,
        rounds: int = 2,
        tasks: str | Path | list[dict[str, Any]] = "arithmetic",
        render_mode: str | None = None,
    ):
        if num_agents < 2:
            raise ValueError(f"a debate needs num_agents >= 2, got {num_agents}")
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        super().__init__(
            [f"agent_{i}" for i in range(num_agents)], max_rounds=rounds + 1, render_mode=render_mode
        )
        self.questions = None if tasks == "arithmetic" else load_questions(tasks)
        self.question: Question | None = None
        self.latest: dict[str, str] = {}

    def new_episode(self, options: dict[str, Any] | None) -> dict[str, str]:
        if self.questions is None:
            self.question = arithmetic_question(self.np_random)
        else:
            self.question = self.questions[int(self.np_random.integers(0, len(self.questions)))]
        self.latest = {}
        return dict.fromkeys(self.possible_agents, self.question.prompt())

    async def play_round(self, actions: dict[str, str]) -> RoundResult:
        question = self.question
        self.latest.update(actions)
        if self.rounds + 1 < self.max_rounds:
            return RoundResult(observations={a: self._debate_prompt(a) for a in actions})
        finals = {a: question.extract(self.latest.get(a, "")) for a in self.possible_agents}
        vote = majority([finals[a] for a in self.possible_agents])
        vote_correct = float(question.is_correct(vote))
        correct = {a: float(question.is_correct(finals[a])) for a in self.possible_agents}
        return RoundResult(
            rewards=correct,
            done=True,
            components={a: {"correct": correct[a], "majority_correct": vote_correct} for a in correct},
            infos={a: {"final_answer": finals[a]} for a in correct},
            episode_info={
                "question_id": question.id,
                "gold": question.answer,
                "final_answers": finals,
                "majority_answer": vote,
                "majority_correct": bool(vote_correct),
            },
        )

    def _debate_prompt(self, agent: str) -> str:
        others = [self.latest[a] for a in self.possible_agents if a != agent and a in self.latest]
        shown = "\n\n".join(f"One agent solution: ```{text}```" for text in others)
        return (
            f"These are the solutions to the problem from other agents:\n\n{shown}\n\n"
            "Using the reasoning from other agents as additional advice, can you give an updated answer? "
            "Examine your solution and that of other agents step by step. " + self.question.format_hint()
        )
