"""``aligngym view``: the page model, its escaping and policy, the CLI's checks, and the page in a real browser.

The browser tests drive the system chromium (``apt-get install chromium``) through playwright, never a
downloaded browser; they skip, saying so, when either is missing.
"""

from __future__ import annotations

import json
import re

import pytest
from _helpers import solve
from _viewer_rows import (
    ARITH,
    DEBATE,
    PAYLOADS,
    TOOLS,
    CalculatorAgent,
    hostile_row,
    mixed_rows_data,
    play,
    write_jsonl,
)

from aligngym.agents.scripted import ScriptedAgent
from aligngym.cli import main
from aligngym.viewer import build_data, build_report, embed_json
from aligngym.viewer.data import group_episodes, pair_runs, view_row
from aligngym.viewer.page import csp_hash


@pytest.fixture(scope="module")
def mixed_rows() -> list[dict]:
    """Two episodes each: native tool calls, a failing backend, a three-seat debate, right answers."""
    return mixed_rows_data()


# -- the page model -------------------------------------------------------------------------------------
def test_embedded_json_cannot_end_its_script_element():
    value = {"text": "".join(PAYLOADS) + "\ud800", "n": [1.5, None, True]}
    text = embed_json(value)
    assert not set(text) & set("<>&\u2028\u2029")
    assert text.isascii()
    assert json.loads(text) == value


def test_rows_are_made_browser_safe_and_light():
    row = {"episode": 0, "reward": float("nan"), "rewards": [float("inf"), 1.0], "tokens": [{"turn": 0}]}
    row |= {"env_kwargs": {"a": 1}, "info": {"x": float("-inf")}, "sampling_seed": 7}
    assert view_row(row) == {
        "episode": 0,
        "reward": None,
        "rewards": [None, 1.0],
        "info": {"x": None},
        "sampling_seed": 7,
    }


def test_seats_of_an_episode_form_one_item(mixed_rows):
    items = group_episodes(mixed_rows)
    assert [(i["env"], len(i["seats"])) for i in items] == [(TOOLS, 1)] * 2 + [(ARITH, 1)] * 2 + [
        (DEBATE, 3)
    ] * 2 + [(ARITH, 1)] * 2
    debate = items[4]
    assert [s["seat"] for s in debate["seats"]] == ["agent_0", "agent_1", "agent_2"]
    assert [i["error"] for i in items[2:4]] == [[True], [True]] and items[0]["error"] == [False]
    # Rows written before episode ids: the episode index links the seats.
    old = [dict(r, episode_id="") for r in mixed_rows if r["env_id"] == DEBATE]
    assert [len(i["seats"]) for i in group_episodes(old)] == [3, 3]


def _row(seed, reward, **extra) -> dict:
    """A bare row; ``sample_index`` given makes it one of two samples per prompt."""
    sampled = {"samples_per_prompt": 2} if "sample_index" in extra else {}
    return {
        "env_id": ARITH,
        "episode": 0,
        "seed": seed,
        "agent_id": None,
        "reward": reward,
        **sampled,
        **extra,
    }


def test_two_runs_pair_by_env_seed_seat_and_sample(mixed_rows):
    a = play(ARITH, ScriptedAgent(["no idea"]), [0, 1, 2, 3])
    b = play(ARITH, ScriptedAgent(solve), [2, 3, 4, 5])
    items = pair_runs(a, b)
    assert [(i["seed"], i["match"]) for i in items] == [
        (0, "a"),
        (1, "a"),
        (2, "both"),
        (3, "both"),
        (4, "b"),
        (5, "b"),
    ]
    both = items[2]["seats"][0]["rows"]
    assert (
        both[0]["seed"] == both[1]["seed"] == 2 and both[1]["success"] is True and both[0]["success"] is False
    )
    assert items[2]["reward"][1] > items[2]["reward"][0]
    # A seed played twice without sample numbers pairs play by play; sample numbers pair whatever the order.
    twice_a, twice_b = [_row(0, 0.0), _row(0, 0.25)], [_row(0, 0.5), _row(0, 0.75)]
    pairs = pair_runs(twice_a, twice_b)
    assert [(i["repeat"], i["sample"], i["reward"]) for i in pairs] == [
        (0, None, [0.0, 0.5]),
        (1, None, [0.25, 0.75]),
    ]
    samples_a = [_row(0, 0.0, sample_index=0), _row(0, 0.25, sample_index=1)]
    samples_b = [_row(0, 0.75, sample_index=1), _row(0, 0.5, sample_index=0)]
    pairs = pair_runs(samples_a, samples_b)
    assert [(i["repeat"], i["sample"], i["reward"]) for i in pairs] == [
        (0, 0, [0.0, 0.5]),
        (0, 1, [0.25, 0.75]),
    ]
    # Fields a file got wrong still give a report.
    odd = _row([0], 10**400, success=[True], episode_id={"x": 1})
    assert [(i["match"], i["reward"], i["success"]) for i in pair_runs([odd], [odd])] == [
        ("both", [None] * 2, [None] * 2)
    ]
    assert [i["seed"] for i in group_episodes([odd])] == [[0]]
    # Seats pair with their own seat; a seat missing from one run leaves the pair partial.
    debate = [r for r in mixed_rows if r["env_id"] == DEBATE]
    items = pair_runs(debate, debate[:5])
    assert [i["match"] for i in items] == ["both", "partial"]
    assert [s["seat"] for s in items[1]["seats"]] == ["agent_0", "agent_1", "agent_2"]


def test_page_allows_only_its_own_code_and_no_network(mixed_rows):
    html = build_report([("run.jsonl", mixed_rows)])
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"script-src {csp_hash(script)};" in csp and f"style-src {csp_hash(style)};" in csp
    assert csp.startswith("default-src 'none';") and "unsafe" not in csp
    code = re.sub(r'<script type="application/json".*?</script>', "", html, flags=re.S)
    assert "http://" not in code and "https://" not in code
    # No API that parses a string as markup or code.
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write|eval\(|Function\(", script)


def test_row_text_appears_only_inside_the_data_element():
    html = build_report([("run.jsonl", [hostile_row()])])
    data = re.search(r'<script type="application/json" id="aligngym-data">(.*?)</script>', html, re.S)
    outside = html[: data.start()] + html[data.end() :]
    assert "pwned" not in outside and "pwned" in data.group(1)
    assert (
        json.loads(data.group(1))["items"][0]["seats"][0]["rows"][0]["messages"][0]["content"] == PAYLOADS[0]
    )


def test_page_model_refuses_three_runs():
    with pytest.raises(ValueError, match="one run or compares two"):
        build_data([("a", []), ("b", []), ("c", [])])


# -- the command ----------------------------------------------------------------------------------------
def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["view", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def test_cli_writes_report_and_says_where(capsys, tmp_path, mixed_rows):
    src = write_jsonl(tmp_path / "run.jsonl", mixed_rows)
    out = tmp_path / "nested" / "report.html"
    code, stdout, err = _cli(capsys, src, "--out", out)
    assert code == 0, err
    assert stdout.startswith(f"wrote 8 episodes from {src} to {out} (") and len(stdout.splitlines()) == 1
    assert out.read_text().startswith("<!DOCTYPE html>")
    other = write_jsonl(tmp_path / "other.jsonl", mixed_rows[:2] + play(TOOLS, CalculatorAgent(), [7]))
    code, stdout, err = _cli(capsys, src, other, "--out", out, "--overwrite")
    assert code == 0, err
    assert stdout.endswith(f"2 matched, 6 only in {src}, 1 only in {other}")


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "not found"),
        ("directory", "is a directory"),
        ("not_trajectories", "not a trajectory row"),
        ("three_files", "give one trajectory file, or two"),
        ("out_exists", "--overwrite"),
        ("out_is_input", "is an input file"),
        ("page_size", "--page-size"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(capsys, tmp_path, mixed_rows, case, needle):
    src = write_jsonl(tmp_path / "run.jsonl", mixed_rows[:2])
    out = tmp_path / "report.html"
    out.write_text("my precious report")
    args = {
        "missing": [tmp_path / "nope.jsonl", "--out", tmp_path / "new.html"],
        "directory": [tmp_path, "--out", tmp_path / "new.html"],
        "not_trajectories": [
            write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c"}]),
            "--out",
            tmp_path / "new.html",
        ],
        "three_files": [src, src, src, "--out", tmp_path / "new.html"],
        "out_exists": [src, "--out", out],
        "out_is_input": [src, "--out", src, "--overwrite"],
        "page_size": [src, "--out", tmp_path / "new.html", "--page-size", "0"],
    }[case]
    before = src.read_bytes()
    code, stdout, err = _cli(capsys, *args)
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1 and needle in err, err
    assert out.read_text() == "my precious report" and src.read_bytes() == before
    assert not (tmp_path / "new.html").exists()
