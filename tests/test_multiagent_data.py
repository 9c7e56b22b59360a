"""The shipped multi-agent datasets (debate, judged debate, social sandbox, scenarios) are well formed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "envs" / "data"


def load(name: str) -> list[dict]:
    text = (DATA / name).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


DEBATE = load("debate_questions.jsonl")
JUDGED = load("judged_debate.jsonl")
SOCIAL = load("social_questions.jsonl")
SCENARIOS = load("social_scenarios.jsonl")


def nonempty_str(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


@pytest.mark.parametrize(
    ("rows", "minimum"),
    [(DEBATE, 120), (JUDGED, 30), (SOCIAL, 40), (SCENARIOS, 24)],
    ids=["debate", "judged", "social", "scenarios"],
)
def test_counts_and_unique_ids(rows, minimum):
    assert len(rows) >= minimum
    ids = [row["id"] for row in rows]
    assert all(nonempty_str(i) for i in ids)
    assert len(ids) == len(set(ids))


def test_debate_mix_of_kinds():
    kinds = [row["kind"] for row in DEBATE]
    assert set(kinds) == {"mc", "short"}
    assert kinds.count("mc") >= 35
    assert kinds.count("short") >= 75
    topics = {row["topic"] for row in DEBATE}
    assert {"math", "science", "geography", "history", "units", "logic"} <= topics


@pytest.mark.parametrize("row", DEBATE, ids=[row["id"] for row in DEBATE])
def test_debate_question(row):
    assert nonempty_str(row["question"]) and nonempty_str(row["topic"])
    if row["kind"] == "mc":
        assert set(row) == {"id", "question", "choices", "answer", "kind", "topic"}
        choices = row["choices"]
        assert isinstance(choices, list) and len(choices) == 4
        assert all(nonempty_str(c) for c in choices)
        assert len(set(choices)) == 4
        assert row["answer"] in {"A", "B", "C", "D"}
    else:
        assert row["kind"] == "short"
        assert set(row) == {"id", "question", "answer", "aliases", "kind", "topic"}
        assert nonempty_str(row["answer"])
        assert row["answer"] == row["answer"].strip()
        assert isinstance(row["aliases"], list) and all(nonempty_str(a) for a in row["aliases"])
        assert row["answer"] not in row["aliases"]
        if row["topic"] == "math":
            assert row["answer"].isdigit(), "math answers are plain integers"


def test_debate_mc_answers_are_spread_over_letters():
    letters = [row["answer"] for row in DEBATE if row["kind"] == "mc"]
    for letter in "ABCD":
        assert letters.count(letter) >= len(letters) // 8


@pytest.mark.parametrize("row", JUDGED, ids=[row["id"] for row in JUDGED])
def test_judged_item(row):
    assert set(row) == {"id", "passage", "question", "answers", "correct", "supporting_quotes"}
    assert nonempty_str(row["passage"]) and nonempty_str(row["question"])
    assert 120 <= len(row["passage"].split()) <= 250
    answers = row["answers"]
    assert isinstance(answers, list) and len(answers) == 2
    assert all(nonempty_str(a) for a in answers) and answers[0] != answers[1]
    assert row["correct"] in {0, 1} and not isinstance(row["correct"], bool)
    quotes = row["supporting_quotes"]
    assert isinstance(quotes, list) and 1 <= len(quotes) <= 3
    for quote in quotes:
        assert nonempty_str(quote)
        assert quote in row["passage"], f"quote not verbatim in passage: {quote!r}"


def test_judged_correct_index_is_balanced():
    share = sum(row["correct"] == 0 for row in JUDGED) / len(JUDGED)
    assert 0.35 <= share <= 0.65


@pytest.mark.parametrize("row", SOCIAL, ids=[row["id"] for row in SOCIAL])
def test_social_question(row):
    assert set(row) == {"id", "question", "topic", "aligned_answer", "misaligned_answer"}
    for field in ("question", "topic", "aligned_answer", "misaligned_answer"):
        assert nonempty_str(row[field]), field
    assert row["question"].rstrip().endswith("?")
    assert row["aligned_answer"] != row["misaligned_answer"]


def test_social_questions_cover_several_topics():
    assert len({row["topic"] for row in SOCIAL}) >= 4


@pytest.mark.parametrize("row", SCENARIOS, ids=[row["id"] for row in SCENARIOS])
def test_scenario(row):
    assert {"id", "scenario", "agents", "keywords"} <= set(row)
    assert nonempty_str(row["scenario"])
    agents = row["agents"]
    assert isinstance(agents, list) and len(agents) == 2
    for agent in agents:
        assert set(agent) == {"name", "background", "goal", "secret"}
        assert all(nonempty_str(agent[field]) for field in agent)
    names = [agent["name"] for agent in agents]
    assert names[0] != names[1]
    keywords = row["keywords"]
    assert isinstance(keywords, dict) and set(keywords) == set(names)
    for words in keywords.values():
        assert isinstance(words, list) and 2 <= len(words) <= 5
        assert all(nonempty_str(w) and w == w.lower() for w in words)
