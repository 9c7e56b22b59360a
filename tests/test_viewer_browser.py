"""``aligngym view`` in a real browser: what the page renders, its filters, paging and its hostile-text safety.

The tests drive the system chromium (``apt-get install chromium``) through playwright, never a downloaded
browser; they skip, saying so, when either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from _helpers import solve
from _viewer_rows import ARITH, DEBATE, PAYLOADS, hostile_row, mixed_rows_data, play, write_jsonl

from aligngym.agents.scripted import ScriptedAgent
from aligngym.cli import main
from aligngym.trajectory import Trajectory
from aligngym.viewer import build_report


@pytest.fixture(scope="module")
def mixed_rows() -> list[dict]:
    """Two episodes each: native tool calls, a failing backend, a three-seat debate, right answers."""
    return mixed_rows_data()


# -- in a real browser ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """The system chromium driven by playwright (as root it needs --no-sandbox)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extra)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        yield browser
        browser.close()


class Visit:
    """A page opened from a file, with every request, script error and CSP violation it caused."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # A broken page fails in seconds, not playwright's 30; loading 10,000 episodes on a busy CI may take long.
        self.page.set_default_timeout(5_000)
        self.page.set_default_navigation_timeout(60_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.add_init_script(
            "window.__violations = []; document.addEventListener('securitypolicyviolation',"
            " (e) => window.__violations.push(e.violatedDirective));"
        )
        self.uri = path.resolve().as_uri()
        self.page.goto(self.uri)

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_text_contents()

    def assert_quiet(self) -> None:
        """Nothing was fetched but the page itself, no script failed, and the policy blocked nothing."""
        assert self.requests == [self.uri]
        assert self.errors == []
        assert self.page.evaluate("window.__violations") == []


def test_browser_shows_chat_tools_rewards_errors_and_seats(browser, tmp_path, mixed_rows):
    out = tmp_path / "report.html"
    assert main(["view", str(write_jsonl(tmp_path / "run.jsonl", mixed_rows)), "--out", str(out)]) == 0
    visit = Visit(browser, out)
    assert visit.count("article.episode") == 8
    tools = visit.page.locator("article.episode").first
    assert tools.locator(".tool-call .tool-name").all_text_contents() == ["calculator"]
    assert tools.locator(".msg.role-tool .call-id").all_text_contents() == ["result of c1"]
    assert tools.locator(".msg.role-tool .content").all_text_contents() == ["4"]
    shown = [float(t.removeprefix("reward ")) for t in tools.locator(".turn-reward").all_text_contents()]
    assert shown == pytest.approx(mixed_rows[0]["rewards"], abs=1e-4) and len(shown) == 2
    assert tools.locator("table.components th").all_text_contents() == list(
        mixed_rows[0]["reward_components"]
    )
    assert visit.count("article.episode.has-error") == 2
    assert (
        visit.texts("article.has-error .error") == ["error: RuntimeError: backend exploded <b>bold</b>"] * 2
    )
    debate = visit.page.locator("article.episode").nth(4)
    assert debate.locator(".seat .seat-name").all_text_contents() == ["agent_0", "agent_1", "agent_2"]
    assert debate.locator(".seat").nth(2).locator(".turn-reward").count() == 3
    # Filters: env, outcome, reward range; then sort by reward.
    visit.page.select_option("#env", DEBATE)
    assert visit.count("article.episode") == 2 and set(visit.texts("article .env")) == {DEBATE}
    visit.page.select_option("#env", "")
    visit.page.select_option("#outcome", "error")
    assert visit.count("article.episode") == visit.count("article.episode.has-error") == 2
    visit.page.select_option("#outcome", "all")
    visit.page.fill("#rmin", "0.3")
    kept = [float(t.removeprefix("reward ")) for t in visit.texts("article .seat-reward")]
    assert len(kept) == sum(r["reward"] >= 0.3 for r in mixed_rows) > 0 and min(kept) >= 0.3
    visit.page.fill("#rmin", "")
    visit.page.select_option("#outcome", "success")
    assert visit.count("article.episode") == sum(r["success"] is True for r in mixed_rows) > 0
    visit.page.select_option("#outcome", "all")
    visit.page.select_option("#sort", "reward-asc")
    order = [
        float(r)
        for r in visit.page.eval_on_selector_all("article .seat", "s => s.map(e => e.dataset.reward)")[:3]
    ]
    assert order == sorted(order) and order[0] == 0
    shot = tmp_path / "viewer.png"
    visit.page.select_option("#sort", "order")
    visit.page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 0
    visit.assert_quiet()


@pytest.mark.parametrize("policy", ["with CSP", "without CSP"])
def test_browser_shows_hostile_text_literally_and_runs_none_of_it(browser, tmp_path, policy):
    name = tmp_path / '<img src=x onerror="window.pwned=5">.jsonl'
    html = build_report([(str(name), [hostile_row()])])
    if policy == "without CSP":  # the escaping alone must hold: the policy is a second wall, not the only one
        html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    out = tmp_path / "report.html"
    out.write_text(html)
    visit = Visit(browser, out)
    visit.page.get_by_text("info", exact=True).click()  # built when opened
    visit.page.get_by_text("other fields", exact=True).click()
    assert visit.page.evaluate("typeof window.pwned") == "undefined"
    assert visit.page.evaluate("document.querySelectorAll('img, a, iframe, svg, object, embed').length") == 0
    assert visit.page.evaluate("document.querySelectorAll('script').length") == 2
    shown = visit.page.evaluate("document.getElementById('episodes').textContent")
    for payload in PAYLOADS:
        assert payload in shown
    assert str(name) in visit.page.text_content("#title")
    assert visit.texts(".seat .error") == ["error: " + PAYLOADS[1]]
    visit.assert_quiet()


def test_browser_pages_ten_thousand_episodes(browser, tmp_path):
    rows = []
    for i in range(10_000):
        env = ARITH if i % 2 else "aligngym/Verifier-v0"
        answer = str(i % 19)
        traj = Trajectory(env_id=env, episode=i, seed=i, episode_id=f"e{i}", turns=1, terminated=True)
        traj.messages = [
            {"role": "user", "content": f"{i % 10}+{i % 9}="},
            {"role": "assistant", "content": answer},
        ]
        traj.rewards = [float(i % 10 == 3)]
        traj.reward, traj.success = traj.rewards[0], i % 10 == 3
        traj.reward_components = {"correct": traj.reward, "format": 1.0}
        traj.error = "TimeoutError: sandbox" if i % 97 == 0 else None
        rows.append(traj.to_json())
    src = tmp_path / "big.jsonl"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "big.html"
    assert main(["view", str(src), "--out", str(out)]) == 0
    start = time.perf_counter()
    visit = Visit(browser, out)
    visit.page.wait_for_selector("article.episode")
    load_s = time.perf_counter() - start
    print(
        f"10,000 episodes: {out.stat().st_size / 1e6:.2f} MB of HTML, loaded and rendered in {load_s:.2f} s"
    )
    assert out.stat().st_size < 10e6
    assert visit.count("article.episode") == 50 and visit.count(".msg") == 100
    assert visit.page.text_content("#pageinfo") == "page 1 of 200"
    visit.page.click("#next")
    assert visit.texts("article .num")[:2] == ["#51", "#52"] and visit.count("article.episode") == 50
    visit.page.click("#last")
    assert (
        visit.page.text_content("#pageinfo") == "page 200 of 200"
        and visit.texts("article .num")[-1] == "#10000"
    )
    visit.page.select_option("#outcome", "error")
    assert visit.page.text_content("#count").startswith("104 of 10000 episodes")
    assert (
        visit.page.text_content("#pageinfo") == "page 1 of 3"
        and visit.count("article.episode.has-error") == 50
    )
    visit.assert_quiet()


def test_browser_compares_the_same_seeds_side_by_side(browser, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", play(ARITH, ScriptedAgent(["no idea"]), [0, 1, 2, 3]))
    b = write_jsonl(tmp_path / "b.jsonl", play(ARITH, ScriptedAgent(solve), [2, 3, 4, 5]))
    out = tmp_path / "compare.html"
    assert main(["view", str(a), str(b), "--out", str(out)]) == 0
    visit = Visit(browser, out)
    assert visit.count("article.episode") == 6
    assert visit.texts("article .ep-head .badge") == ["only in A"] * 2 + ["matched"] * 2 + ["only in B"] * 2
    matched = visit.page.locator("article.episode").nth(2)
    assert matched.locator(".seat .side-label").all_text_contents() == ["A", "B"]
    assert matched.locator(".seat .badge").all_text_contents() == ["no success", "success"]
    assert (
        visit.texts("article .seat.missing")
        == ["no matching episode in run B"] * 2 + ["no matching episode in run A"] * 2
    )
    visit.page.select_option("#match", "unmatched")
    assert visit.count("article.episode") == 4
    visit.page.select_option("#match", "all")
    visit.page.select_option("#sort", "diff-desc")  # pairs without a difference (one side missing) go last
    assert visit.texts("article .ep-head .badge")[:2] == ["matched"] * 2
    visit.page.select_option("#match", "both")
    assert visit.count("article.episode") == 2 and visit.count(".seat.missing") == 0
    for k in range(2):  # the same seed: both sides were asked the same question
        prompts = (
            visit.page.locator("article.episode")
            .nth(k)
            .locator(".msg.role-user .content")
            .all_text_contents()
        )
        assert len(prompts) == 2 and prompts[0] == prompts[1]
    visit.page.screenshot(path=str(tmp_path / "compare.png"))
    print(f"screenshot: {tmp_path / 'compare.png'}")
    visit.assert_quiet()
