from __future__ import annotations

import json
import random
import re

import datasets
import pytest

from aligngym.rows import row_identity
from aligngym.trajectory import (
    RunKey,
    Trajectory,
    TrajectoryFileError,
    TrajectoryWriter,
    check_resumable,
    read_trajectories,
)


def _traj(i, **kw):
    fields = {"env_id": "x/Y-v0", "episode": i, "seed": i, "messages": [{"role": "user", "content": "é"}]}
    return Trajectory(**{**fields, **kw})


def test_rows_load_with_datasets(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:
        for i in range(3):
            w.write(_traj(i, rewards=[0.5], reward=0.5, info={"obj": object(), "nan": float("nan")}))
        w.write(_traj(3, error="AgentError: boom"))
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(ds) == 4
    required = {
        "env_id",
        "episode",
        "seed",
        "messages",
        "rewards",
        "reward",
        "terminated",
        "truncated",
        "info",
        "error",
    }
    assert required <= set(ds.column_names)
    assert ds[3]["error"] == "AgentError: boom"
    row = read_trajectories(path)[0]
    assert row["info"]["nan"] is None and row["info"]["obj"].startswith("<object")


def test_resume_cuts_torn_line_and_reports_done(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj(0))
        w.write(_traj(2))
    with path.open("a") as fh:
        fh.write(_traj(5).to_json()[:40])  # a writer killed mid-line
    assert [r["episode"] for r in read_trajectories(path)] == [0, 2]
    with TrajectoryWriter(path, resume=True) as w:
        assert w.done == {0, 2}
        w.write(_traj(5))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["episode"] for line in lines] == [0, 2, 5]


def test_without_resume_file_is_replaced(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj(0))
    with TrajectoryWriter(path) as w:
        assert w.done == set()
    assert path.read_text() == ""
    assert Trajectory.from_dict({**json.loads(_traj(1).to_json()), "future_key": 1}).episode == 1


@pytest.mark.parametrize(
    "fields", [{"info": "{not json"}, {"reward_components": [{"value": 1.0}]}], ids=["info", "components"]
)
def test_a_field_in_no_written_form_names_its_line(tmp_path, fields):
    path = tmp_path / "run.jsonl"
    good = json.loads(Trajectory(env_id="e", episode=0, seed=0).to_json())
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "episode": 1, **fields}) + "\n")
    with pytest.raises(TrajectoryFileError, match="line 2: a field cannot be read"):
        read_trajectories(path)


# -- resume: streaming, reading only what identifies an episode --------------------------------------------
RUN = RunKey("x/Y-v0", 3, {"quote": 'a "b" \\ c', "n": 5}, samples_per_prompt=2)
AWKWARD = ['", "episode": 5, "num_agents": 9, "x": "', "é😀\u2028\x00\t\n\\", '\\u0041 {} [] \\\\"', ""]


def _seat_rows(episode: int, seats: int = 2, run: RunKey = RUN, **kw) -> list[Trajectory]:
    seed = run.seed + episode // run.samples_per_prompt
    rows = [
        _traj(episode, env_id=run.env_id, seed=seed, agent_id=f"p{seat}", num_agents=seats, **kw)
        for seat in range(seats)
    ]
    for t in rows:
        run.stamp(t)
    return rows


def _episodes(path) -> list[int]:
    return [json.loads(line)["episode"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_kind_of_row_the_writer_writes_is_read_by_its_layout():
    """Rows in the writer's layout are read without parsing them: the layout must follow the writer."""
    rng = random.Random(0)
    trajectories = [
        _traj(
            0, messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "args": "{}"}]}]
        ),
        _traj(-3, error="AgentError: boom", info={"nan": float("nan"), "x": object()}),
        Trajectory(env_id='o"dd\\id', episode=10**17, seed=None, agent_id="p1", num_agents=3, success=True),
    ]
    trajectories[0].tokens = [{"turn": 0, "prompt_ids": [1], "completion_ids": [2], "logprobs": [-0.5]}]
    for i in range(200):  # messages of awkward text: quotes, escapes, keys, control characters, astral planes
        code = rng.choice([rng.randrange(0x20), rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)])
        text = "".join(rng.choice([*AWKWARD, chr(code)]) for _ in range(6))
        messages = [{"role": rng.choice(["user", "tool", text]), "content": text, "name": text[:3]}]
        trajectories.append(
            Trajectory(env_id=text, episode=rng.randrange(-(10**9), 10**9), seed=i, messages=messages)
        )
    for t in trajectories:
        RUN.stamp(t)
        line = t.to_json() + "\n"
        row = json.loads(line)
        fields = ("env_id", "episode", "seed", "num_agents", "env_kwargs", "samples_per_prompt")
        assert row_identity(line) == tuple(row[k] for k in fields)


def test_resume_does_not_parse_whole_rows(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path, run=RUN) as w:
        for i in range(6):
            w.write(*_seat_rows(i, messages=[{"role": "user", "content": AWKWARD[0]}]))
    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: parsed.append(s) or loads(s, *a, **k))
    check_resumable(path, RUN)
    with TrajectoryWriter(path, resume=True, run=RUN) as w:
        assert w.done == set(range(6))
    assert not [s for s in parsed if "messages" in str(s)]  # only short fields (env kwargs), never a row
    read_trajectories(path)
    assert len([s for s in parsed if "messages" in str(s)]) == 12  # the full reader does parse them


def test_what_only_looks_like_a_key_is_not_read_as_one(tmp_path):
    """Text in a message, a key nested in a foreign message, a key given twice: resume agrees with the parser."""
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj(0, messages=[{"role": "user", "content": AWKWARD[0]}]))
    row = json.loads(_traj(1).to_json())
    nested = {**row, "messages": [{"role": "user", "content": "hi", "episode": 7, "num_agents": 3}]}
    twice = _traj(2).to_json()[:-1] + ', "episode": 9}'  # json.loads keeps the last one
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(nested) + "\n" + twice + "\n")
    with TrajectoryWriter(path, resume=True) as w:
        assert w.done == {0, 1, 9} == {r["episode"] for r in read_trajectories(path)}


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda line: line.replace('\\"b\\"', '"b"'),  # a quote left unescaped
        lambda line: line.replace("é", "\\q"),  # an escape JSON has not got
        lambda line: line.replace("é", "\t"),  # a raw control character in a string
        lambda line: line.replace('"episode": 1', '"episode": 1.0'),
        lambda line: line.replace('"seed": 3', '"seed": 3,'),
    ],
    ids=["quote", "escape", "control", "float-episode", "comma"],
)
def test_a_hand_edited_line_that_is_not_a_row_is_refused(tmp_path, corrupt):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path, run=RUN) as w:
        w.write(_traj(0, seed=3))
        w.write(_traj(1, seed=3, messages=[{"role": "user", "content": 'é a "b"'}]))
        w.write(_traj(2, seed=4))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert corrupt(lines[1]) != lines[1]
    path.write_text(lines[0] + corrupt(lines[1]) + lines[2], encoding="utf-8")
    before = path.read_bytes()
    for resume in (lambda: check_resumable(path, RUN), lambda: TrajectoryWriter(path, resume=True)):
        with pytest.raises(TrajectoryFileError, match="line 2 is not a trajectory row"):
            resume()
    assert path.read_bytes() == before


def test_invalid_utf8_and_bad_env_kwargs_text_are_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    line = _traj(0, seed=3).to_json().encode()
    path.write_bytes(line.replace(b"\xc3\xa9", b"\xc3") + b"\n")
    with pytest.raises(TrajectoryFileError, match="line 1 is not a trajectory row"):
        TrajectoryWriter(path, resume=True)
    path.write_bytes(line.replace(b'"env_kwargs": "{}"', b'"env_kwargs": "{nope"') + b"\n")
    with pytest.raises(TrajectoryFileError, match="line 1: a field cannot be read"):
        check_resumable(path, RunKey("x/Y-v0", 3, {}, 1))


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (RunKey("x/Y-v0", 8, RUN.env_kwargs, 2), "episode 4 was written with --seed 8"),
        (RunKey("x/Y-v0", 3, {"n": 6}, 2), 'episode 4 was written with --env-kwargs {"n": 6}'),
        (RunKey("x/Z-v0", 3, RUN.env_kwargs, 2), "episode 4 was written with env id 'x/Z-v0'"),
        (RunKey("x/Y-v0", 3, RUN.env_kwargs, 1), "episode 4 was written with --samples-per-prompt 1"),
    ],
)
def test_resume_refuses_a_row_of_another_run_wherever_it_is(tmp_path, other, why):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:  # as if resumed with other settings and no check
        for i in range(6):
            w.write(*_seat_rows(i, run=other if i == 4 else RUN))
    before = path.read_bytes()
    with pytest.raises(TrajectoryFileError, match=re.escape(why)):
        check_resumable(path, RUN)
    with pytest.raises(TrajectoryFileError, match=re.escape(why)):
        TrajectoryWriter(path, resume=True, run=RUN)
    assert path.read_bytes() == before


def test_an_episode_cut_mid_write_is_dropped_and_the_file_cut_not_rewritten(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path, run=RUN) as w:
        for i in range(3):
            w.write(*_seat_rows(i))
    with path.open("a", encoding="utf-8") as fh:  # a kill -9 in the middle of episode 3's write
        first, second = (t.to_json() for t in _seat_rows(3))
        fh.write(first + "\n" + second[:50])
    inode = path.stat().st_ino
    with TrajectoryWriter(path, resume=True, run=RUN) as w:
        assert w.done == {0, 1, 2}
    assert _episodes(path) == [0, 0, 1, 1, 2, 2]
    assert path.stat().st_ino == inode  # cut where episode 3 starts, not copied


def test_an_episode_short_of_seats_mid_file_is_dropped(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path, run=RUN) as w:
        w.write(*_seat_rows(0))
        w.write(_seat_rows(1)[0])  # one seat of two (a file edited by hand, or merged)
        w.write(*_seat_rows(2))
        w.write(*_seat_rows(0)[:1])  # a third row of episode 0 is more than its seats: still complete
    with TrajectoryWriter(path, resume=True, run=RUN) as w:
        assert w.done == {0, 2}
    assert _episodes(path) == [0, 0, 2, 2, 0]
