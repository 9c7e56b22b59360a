"""verifiers' side of ``rollout_throughput.py``: run with the python of a venv that has verifiers installed.

    <venv>/bin/python benchmarks/_verifiers_worker.py --base-url URL --episodes N --concurrency C

Plays single-turn arithmetic tasks through verifiers' own eval runner (``verifiers.v1`` eval: the
single-agent env, its interception server, a ``@reward`` scoring the reply, ``traces.jsonl`` written) with
``max_concurrent=C``, against the same scripted OpenAI-protocol server, and prints one JSON line:
``{"episodes", "errors", "episodes_per_s", "cpu_s_per_episode", "version"}``.

Its best case: every built-in verifiers harness runs a program (a ``uv`` script) in a runtime per rollout;
this harness instead makes its one chat call in-process with one pooled ``AsyncOpenAI`` client, through
the rollout's interception endpoint (the contract ``verifiers.v1.Harness.launch`` documents for
in-process loops), on the subprocess runtime (no container, no tunnel). This module is also the plugin
verifiers imports by id for the taskset and the harness, so it must stay importable by name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time

import openai
import verifiers
import verifiers.v1 as vf
from verifiers.v1.runtimes import ProgramResult

__all__ = ["ArithmeticTaskset", "InProcessChatHarness"]

PLUGIN = "_verifiers_worker"
TASKS = 10**6  # generated lazily; a run takes the first --episodes of them


class ArithmeticData(vf.TaskData):
    answer: str = ""


class ArithmeticTask(vf.Task[ArithmeticData, vf.State, vf.TaskConfig]):
    @vf.reward
    async def correct(self, task: ArithmeticData, trace: vf.Trace) -> float:
        return float(trace.last_reply.strip() == task.answer)


class ArithmeticTaskset(vf.Taskset[ArithmeticTask, vf.TasksetConfig]):
    def load(self):
        for i in range(TASKS):
            a, b = i % 97, (i * 7) % 89
            yield ArithmeticTask(ArithmeticData(prompt=f"What is {a} + {b}?", answer=str(a + b)))


_clients: dict[str, openai.AsyncOpenAI] = {}


class InProcessChatHarness(vf.Harness[vf.HarnessConfig]):
    """One chat completion per rollout, made in-process through the interception endpoint."""

    APPENDS_SYSTEM_PROMPT = True
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(self, ctx, trace, runtime, endpoint, secret, mcp_urls, data, **kwargs) -> ProgramResult:
        system, prompt = self.resolve_prompt(data)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        client = _clients.get(endpoint)
        if client is None:  # one pooled client per interception endpoint; the rollout's secret per request
            client = _clients[endpoint] = openai.AsyncOpenAI(
                base_url=endpoint, api_key="unused", max_retries=0
            )
        reply = await client.chat.completions.create(
            model=ctx.model, messages=messages, extra_headers={"Authorization": f"Bearer {secret}"}
        )
        return ProgramResult(exit_code=0, stdout=reply.choices[0].message.content or "", stderr="")


async def run(base_url: str, episodes: int, concurrency: int, out_dir: str) -> tuple[int, int]:
    from verifiers.v1.cli.eval.runner import run_eval
    from verifiers.v1.configs.cli.eval import EvalConfig

    config = EvalConfig.model_validate(
        {
            "env": {
                "taskset": {"id": PLUGIN},
                "agent": {"harness": {"id": PLUGIN}, "runtime": {"type": "subprocess"}},
            },
            "model": "scripted",
            "client": {"type": "eval", "base_url": base_url, "api_key_var": "AG_BENCH_NO_KEY"},
            "select": {"limit": episodes},
            "num_rollouts": 1,
            "max_concurrent": concurrency,
            "rich": None,
            "push": False,
            "output_dir": out_dir,
        }
    )
    done = await run_eval(config)
    return len(done), sum(1 for e in done if not getattr(e, "ok", True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--episodes", type=int, default=1280)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=64, help="episodes of an untimed run first")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if args.warmup:
            asyncio.run(run(args.base_url, args.warmup, args.concurrency, tmp))
        cpu0, t0 = time.process_time(), time.perf_counter()
        n, errors = asyncio.run(run(args.base_url, args.episodes, args.concurrency, tmp))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    row = {
        "episodes": n,
        "errors": errors,
        "episodes_per_s": n / wall,
        "cpu_s_per_episode": cpu / max(n, 1),
        "version": verifiers.__version__,
    }
    print(json.dumps(row))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
