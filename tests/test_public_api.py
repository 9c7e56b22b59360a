"""Guards the public names: removing or renaming one is a breaking change and must be deliberate."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "aligngym": {
        "RolloutSummary",
        "StepResult",
        "TextEnv",
        "TextSpace",
        "Trajectory",
        "TrajectoryWriter",
        "__version__",
        "check_conformance",
        "make",
        "play_episode",
        "read_trajectories",
        "register",
        "registered",
        "rollout",
        "run_episode",
    },
    "aligngym.envs": {
        "EnvEntry",
        "StepResult",
        "TextEnv",
        "TextSpace",
        "UnknownEnvError",
        "make",
        "register",
        "registered",
        "spec",
    },
    "aligngym.agents": {
        "Agent",
        "AgentError",
        "AgentResponse",
        "BalancedAgent",
        "OpenAIAgent",
        "SamplingConfig",
        "ScriptedAgent",
        "ScriptedChatServer",
        "ToolCallResponse",
        "TransformersAgent",
        "build_agent",
    },
    "aligngym.feedback": {
        "Critic",
        "Feedback",
        "FeedbackResult",
        "Judge",
        "PeerRating",
        "RewardModel",
        "Rubric",
        "SelfConsistency",
        "Verifier",
        "answers_agree",
        "extract_answer",
        "score",
    },
    "aligngym.trainers": {
        "METHODS",
        "ConfigError",
        "TrainConfig",
        "as_trl_environment",
        "env_prompt_dataset",
        "load_config",
        "train",
    },
    "aligngym.sandboxes": {
        "RunResult",
        "Sandbox",
        "SandboxConfig",
        "SandboxError",
        "bwrap_available",
        "make_sandbox",
    },
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_public_api(module):
    mod = importlib.import_module(module)
    assert set(mod.__all__) >= PUBLIC[module], f"{module} lost public names"
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name} is in __all__ but does not resolve"


def test_import_aligngym_is_light():
    import subprocess
    import sys

    code = (
        "import sys, aligngym; print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
