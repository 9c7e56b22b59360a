from __future__ import annotations

import json

import datasets
import pytest

from aligngym.trajectory import Trajectory, TrajectoryFileError, TrajectoryWriter, read_trajectories


def _traj(i, **kw):
    return Trajectory(env_id="x/Y-v0", episode=i, seed=i, messages=[{"role": "user", "content": "é"}], **kw)


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
