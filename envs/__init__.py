"""Environment API, registry and the built-in environments (importing this registers them)."""

from .base import StepResult, TextEnv, TextSpace
from .registry import EnvEntry, UnknownEnvError, make, register, registered, spec

__all__ = [
    "EnvEntry",
    "StepResult",
    "TextEnv",
    "TextSpace",
    "UnknownEnvError",
    "make",
    "register",
    "registered",
    "spec",
]

# Built-ins are registered by entry-point string so importing aligngym stays cheap.
register(
    "aligngym/Arithmetic-v0",
    "aligngym.envs.arithmetic:ArithmeticEnv",
    description="Seeded integer arithmetic with a verifiable answer (correct + format components).",
)
register(
    "aligngym/CodeExec-v0",
    "aligngym.envs.code_exec:CodeExecEnv",
    description="Write Python that passes unit tests, run in a sandbox (reward = fraction passed).",
)
register(
    "aligngym/Debate-v0",
    "aligngym.envs.debate:DebateEnv",
    description="Multi-agent debate (Du et al. 2023): answer, read the others, revise; majority vote.",
    multi_agent=True,
)
register(
    "aligngym/JudgedDebate-v0",
    "aligngym.envs.judged_debate:JudgedDebateEnv",
    description="Judged debate (Irving 2018; Khan 2024): quote a hidden passage; a judge picks the answer.",
    multi_agent=True,
)
register(
    "aligngym/SocialSandbox-v0",
    "aligngym.envs.social_sandbox:SocialSandboxEnv",
    description="Stable Alignment sandbox (Liu et al. 2023): draft, peer-rate 1-7 on a graph, revise, re-rate.",
    multi_agent=True,
)
register(
    "aligngym/SocialGoal-v0",
    "aligngym.envs.social_goal:SocialGoalEnv",
    description="Sotopia social goals (Zhou et al. 2024): two characters, private goals, 7-dimension evaluation.",
    multi_agent=True,
)
register(
    "aligngym/RewardModel-v0",
    "aligngym.envs.model_feedback:RewardModelEnv",
    description="Instruction prompts scored by a learned reward model (optional length penalty).",
)
register(
    "aligngym/Judge-v0",
    "aligngym.envs.model_feedback:JudgeEnv",
    description="Instruction prompts scored by an LLM judge against a constitution (scripted by default).",
)
register(
    "aligngym/Verifier-v0",
    "aligngym.envs.model_feedback:VerifierEnv",
    description="Seeded maths problems with gold answers; binary reward from a math-equivalence verifier.",
)
register(
    "aligngym/CritiqueRefine-v0",
    "aligngym.envs.model_feedback:CritiqueRefineEnv",
    description="Answer, read a critique, revise: reward = score(revision) - score(draft) (self-refine).",
)
register(
    "aligngym/Terminal-v0",
    "aligngym.envs.terminal:TerminalEnv",
    description="Shell tasks in a sandbox (files, text, git, fix a failing test); hidden check script.",
)
register(
    "aligngym/TextWorld-v0",
    "aligngym.envs.textworld:TextWorldEnv",
    description="Embodied text world (BabyAI-Text style): explore rooms, unlock doors and containers, reach a goal.",
)
register(
    "aligngym/ToolUse-v0",
    "aligngym.envs.tool_use:ToolUseEnv",
    description="Answer questions with tools (search, lookup, sql, calculator, python; native or text calls).",
)
