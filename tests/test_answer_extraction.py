"""The shared final-answer extraction (aligngym.feedback.answers): real answers score 1, forgeries score 0.

Every env that grades a final answer uses it, so the same table of answer forms is played through each of
them. The adversarial cases are what a reward-maximising policy would try: each must earn 0, while the
honest answer to the same gold earns 1.
"""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from aligngym.envs.arithmetic import ArithmeticEnv
from aligngym.envs.debate import Question
from aligngym.envs.model_feedback import VerifierEnv
from aligngym.envs.tool_use import ToolUseEnv
from aligngym.feedback import Critic, SelfConsistency, _math_values, answers, score
from aligngym.feedback.answers import (
    answers_agree,
    extract_answer,
    final_value,
    gold_value,
    parse_choice,
    values_equal,
)
from aligngym.feedback.critic import scripted_critique
from aligngym.feedback.verifier import Verifier


def grade(response: str, gold: str) -> bool:
    """The Verifier-v0 verdict."""
    return Verifier(mode="math").check(response, gold)


# -- real answers ---------------------------------------------------------------------------------------
REAL = [
    ("**4**", "4"),
    ("5,050", "5050"),
    ("$\\boxed{4}$", "4"),
    ("The sum is 4.", "4"),
    ("4.0", "4"),
    ("Answer: 4", "4"),
    ("the answer is $4$", "4"),
    ("\\frac{1}{2}", "0.5"),
    ("1/2", "0.5"),
    ("The answer is 3. Actually the answer is 4.", "4"),
    ("Adding the terms pairwise gives 50 pairs of 101, so the sum is $5{,}050$.", "5050"),
    ("So the total is $\\boxed{5\\,050}$.", "5050"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75"),
    ("**Answer:** 42", "42"),
    ("### Final Answer\n\n$$\\boxed{7}$$", "7"),
    ("Janet sells 16 - 3 - 4 = 9 eggs at $2 each.\n#### 18", "18"),
    ("She makes 9 * 2 = $18 every day at the market.", "18"),
    ("So 12 + 3 = 15 apples are left.", "15"),
    ("The sum of 2 and 3 is 5.", "5"),
    ("Solving, $x = -\\frac{7}{3}$.", "-7/3"),
    ("Therefore the answer is \\(\\dfrac{\\sqrt{3}}{2}\\).", "\\frac{\\sqrt{3}}{2}"),
    ("We find $a = 2\\sqrt{2}$, so the length is $\\boxed{2\\sqrt{2}}$", "\\sqrt{8}"),
    ("The roots are $x = 2$ and $x = 3$.", "2, 3"),
    ("\\boxed{3, 2}", "2, 3"),
    ("The probability is 0.333333", "1/3"),
    ("It takes 4 hours.\n\nI hope this helps!", "4"),
    ("Answer: 50%", "50"),
    ("The answer is 4 (four).", "4"),
    ("Answer: 2*x + x", "3x"),
    ("The value is $x^2 - 1$.", "(x-1)(x+1)"),
    ("The answer is \u22124.", "-4"),  # a Unicode minus is a minus
    ("The answer is 4.\nThis answer is correct because 2 + 2 = 4.", "4"),
]


@pytest.mark.parametrize(("response", "gold"), REAL)
def test_real_answer_forms_score_one(response, gold):
    assert grade(response, gold), extract_answer(response)


# -- wrong, negated, hedged -----------------------------------------------------------------------------
WRONG = [
    ("Answer: 5", "4"),
    ("Answer: -4", "4"),
    ("$\\boxed{-4}$", "4"),
    ("Answer: 3 or 4", "4"),
    ("Answer: 3 or 4", "3"),
    ("\\boxed{3} \\boxed{4}", "4"),
    ("4, 5, 6", "6"),
    ("4, 5, 6", "4"),
    ("The answer is 3. Actually the answer is 4.", "3"),
    ("Answer: 12", "1/2"),  # "1/2" without its slash
    ("Answer: 16", "1/6"),
    ("Answer: 1.5", "15"),
    ("0.33", "1/3"),
    ("The roots are $x = 2$ and $x = 3$.", "3"),
    ("Answer: 2", "2, 3"),
]


@pytest.mark.parametrize(("response", "gold"), WRONG)
def test_wrong_negated_and_hedged_answers_score_zero(response, gold):
    assert not grade(response, gold), final_value(response)


# -- a policy's attempts --------------------------------------------------------------------------------
ADVERSARIAL = [
    ("every number", " ".join(str(i) for i in range(1000)), "999"),
    ("every number, comma list", ", ".join(str(i) for i in range(50)), "49"),
    ("huge output before a list", "x " * 200_000 + "3, 4", "4"),
    ("candidates in one box", "\\boxed{3, 4, 5}", "4"),
    ("boxes side by side", "The answer is \\boxed{3} or \\boxed{4}.", "4"),
    ("set containing the gold", "$\\boxed{\\{3,4,5\\}}$", "4"),
    ("interval containing the gold", "$\\boxed{[3,5]}$", "4"),
    ("membership in an interval", "$x \\in (3,5)$", "4"),
    ("plus-minus (LaTeX)", "$4 \\pm 1$", "5"),
    ("plus-minus (Unicode)", "4 \u00b1 1", "3"),
    ("plus-minus (ASCII)", "Answer: 4 +- 1", "5"),
    ("two roots, one gold", "x = 4 or x = 5", "5"),
    ("hedge in text", "\\boxed{3 \\text{ or } 4}", "4"),
    ("hedge inside text", "\\boxed{\\text{3 or 4}}", "4"),
    ("number in text", "$\\text{4}$", "4"),
    ("denial", "The answer is not 4.", "4"),
    ("denial in a box", "The answer is not \\boxed{4}.", "4"),
    ("bound", "It is more than 4.", "4"),
    ("open tail", "Answer: 4 or more", "4"),
    ("not-equal", "$x \\neq 4$", "4"),
    ("inequality", "$x > 3$", "4"),
    ("Arabic-Indic digit", "Answer: \u0664", "4"),
    ("fullwidth digit", "Answer: \uff14", "4"),
    ("mixed-script digits", "Answer: 3\u0664", "3"),
    ("e-notation reads as 4*e*0", "4e0", "0"),
    ("e-notation", "Answer: 4e0", "4"),
    ("hex literal reads as 0*x*4", "0x4", "0"),
    ("hex literal", "Answer: 0x4", "4"),
    ("infinity", "\\boxed{\\infty}", "4"),
    ("zero over zero", "\\boxed{0/0}", "0"),
    ("division by zero", "\\boxed{\\frac{4}{0}}", "4"),
    ("spacing makes a sum", "$3 \\quad 4$", "7"),
    ("spacing makes a product", "$3 \\quad 4$", "12"),
    ("en dash as a minus", "Answer: \u20134", "4"),
    ("text glues two numbers", "\\boxed{4\\text{or}5}", "45"),
    ("tilde glues two numbers", "\\boxed{4~5}", "45"),
    ("negative space glues two numbers", "\\boxed{4\\!5}", "45"),
    ("zero-width joiner", "Answer: 3\u200b4", "4"),
    ("tower of powers", "$\\boxed{2^{2^{2^{2^{2}}}}}$", "4"),
    ("big factorial", "$\\boxed{100000!}$", "1"),
    ("big binomial", "\\boxed{\\binom{100000}{50000}}", "1"),
    ("python power", "Answer: 9**9**9**9", "1"),
    ("eval bait", "Answer: __import__('os').system('true')", "0"),
    ("unknown command", "\\boxed{\\phantom{3}4}", "3"),
    ("colour trick", "\\boxed{\\color{white}{3}4}", "3"),
    ("deep nesting", "\\boxed{" + "{" * 5000 + "4" + "}" * 5000 + "}", "4"),
    ("multiple choice hedge", "(A) or (B)", "A"),
]


@pytest.mark.parametrize(("attack", "response", "gold"), ADVERSARIAL, ids=[a for a, *_ in ADVERSARIAL])
def test_forged_answers_score_zero_and_the_honest_one_scores_one(attack, response, gold):
    if attack == "multiple choice hedge":
        assert parse_choice(response) is None and parse_choice("I pick (A).") == "A"
        return
    assert not grade(response, gold), (attack, extract_answer(response)[:80], final_value(response))
    assert grade(f"The answer is {gold}.", gold)


def test_exactly_one_value_is_compared_per_response():
    # The invariant behind every case above: a response is graded on one value (or one list).
    assert extract_answer("I think 3.\nMaybe 5.\nThe answer is 4.") == "4"
    assert final_value("first 3, then 4") is not None and not grade("first 3, then 4", "3")
    assert values_equal(gold_value("2, 3"), final_value("Answer: 3 and 2"))
    assert not values_equal(gold_value("2, 3"), final_value("Answer: 2, 3, 4"))


# -- one extraction for every env -----------------------------------------------------------------------
ACCEPT = [
    "{g}",
    "**{g}**",
    "The result is {g}.",
    "Answer: {g}",
    "the answer is ${g}$",
    "$\\boxed{{{g}}}$",
    "{g}.0",
]
REJECT = [
    "{w}",
    "-{g}",
    "Answer: {w} or {g}",
    "\\boxed{{{w}}} \\boxed{{{g}}}",
    "{w}, {g}",
    "The answer is not {g}.",
]


def _forms(gold: int) -> list[tuple[str, bool]]:
    def fill(t: str) -> str:
        return t.format(g=gold, w=gold + 1)

    return [(fill(t), True) for t in ACCEPT] + [(fill(t), False) for t in REJECT]


def test_arithmetic_correct_component_uses_the_shared_extraction():
    env = ArithmeticEnv(max_operand=20)
    _, info = env.reset(seed=4)
    for response, expected in _forms(info["answer"]):
        env.reset(seed=4)
        parts = env.step(response)[4]["reward_components"]
        assert parts["correct"] == float(expected), response


def test_debate_tool_use_verifier_critic_and_self_consistency_agree():
    from aligngym.agents import ScriptedAgent

    gold = 12
    question = Question.from_row({"id": "n", "question": "7+5?", "answer": str(gold)})
    task = {"id": "t", "question": "7+5?", "answer": str(gold)}
    for response, expected in _forms(gold):
        assert question.is_correct(question.extract(response)) == expected, ("debate", response)
        env = ToolUseEnv(tasks=[task], builtin_tools=["calculator"])
        env.reset(seed=0)
        assert env.step(response)[4]["reward_components"]["answer"] == float(expected), ("tool", response)
        verifier = VerifierEnv(tasks=[{"prompt": "7+5?", "answer": str(gold)}])
        verifier.reset(seed=0)
        assert verifier.step(response)[1] == float(expected), ("Verifier-v0", response)
        for mode in ("normalized", "numeric", "math"):
            assert Verifier(mode=mode).check(response, str(gold)) == expected, (mode, response)
        assert ("is correct." in scripted_critique(response, gold)) == expected, ("critic", response)
        assert answers_agree(extract_answer(response), str(gold)) == expected, ("agree", response)
        sampler = ScriptedAgent([f"Answer: {gold}"])
        agreement = score(SelfConsistency(agent=sampler, n=2), [], response).score
        assert agreement == float(expected), ("self-consistency", response)
    critique = score(Critic(), [{"role": "user", "content": "7+5?"}], "**12**", gold=gold)
    assert "is correct" in critique.rationale


def test_debate_short_answers_need_the_gold_phrase_and_nothing_else():
    q = Question.from_row({"id": "s", "question": "Capital?", "answer": "Paris", "aliases": ["Paris France"]})
    for said in [
        "Answer: Paris.",
        "Answer: It is Paris.",
        "Answer: Paris, France",
        "The answer is **Paris**",
    ]:
        assert q.is_correct(q.extract(said)), said
    for said in ["Answer: Paris or Lyon", "Answer: Lyon Paris", "Answer: Lyon", "Answer: not Paris"]:
        assert not q.is_correct(q.extract(said)), said


# -- safety and cost ------------------------------------------------------------------------------------
NUMBER_LITERAL = re.compile(r"[0-9]*\.?[0-9]+(?:E[-+]?[0-9]+)?")


def test_no_model_text_reaches_eval(monkeypatch):
    import latex2sympy2_extended.latex2sympy2 as l2s
    import math_verify.parser
    import sympy.parsing.sympy_parser as sympy_parser

    seen: list[str] = []
    real = sympy_parser.parse_expr

    def spy(text, *args, **kwargs):
        seen.append(text)
        return real(text, *args, **kwargs)

    def refuse(text, *args, **kwargs):
        raise AssertionError(f"math-verify's expression parser was called on {text!r}")

    monkeypatch.setattr(sympy_parser, "parse_expr", spy)  # sympify() looks it up here at call time
    monkeypatch.setattr(l2s, "parse_expr", refuse)
    monkeypatch.setattr(math_verify.parser, "parse_expr", refuse)
    answers._statement_value.cache_clear()  # a cached verdict would hide the parser calls
    _math_values.latex_value.cache_clear()
    hostile = ["__import__('os')", "exec('1')", "lambda: 1", "().__class__", "x.__dict__", "open('f')"]
    for i, text in enumerate([*hostile, "\\frac{3}{7}", "x^2 + 2x", "\\sqrt{2}/2", "1.5 + 2"]):
        for wrapped in (f"Answer: {text} + {i}", f"$\\boxed{{{text}}} + {i}$", f"{text}"):
            values_equal(gold_value(f"{i}"), final_value(wrapped))
    assert seen, "the LaTeX path ran"
    assert all(NUMBER_LITERAL.fullmatch(s) for s in seen), seen


def test_grading_works_off_the_main_thread_without_signals():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    cases = [("$\\frac{\\sqrt{3}}{2}$", "\\frac{\\sqrt3}{2}", True), ("\\boxed{2x+x}", "3x", True)]
    cases += [("$\\frac{1}{3}$", "0.5", False), ("**4**", "4", True)]

    def run(case):
        response, gold, _ = case
        return threading.current_thread() is not threading.main_thread(), grade(response, gold)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, cases * 3))
    assert all(off_main for off_main, _ in results)
    assert [ok for _, ok in results] == [c[2] for c in cases * 3]
    assert signal.getsignal(signal.SIGALRM) == before


def test_grading_inside_asyncio_worker_threads():
    async def main():
        return await asyncio.gather(
            *(asyncio.to_thread(grade, "\\boxed{\\frac{2}{4}}", "1/2") for _ in range(4))
        )

    assert asyncio.run(main()) == [True] * 4
