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

# Built-ins are registered by entry-point string so importing aligngym stays cheap; each description is the
# class's own `description`, read when first shown.
register("aligngym/Arithmetic-v0", "aligngym.envs.arithmetic:ArithmeticEnv")
register("aligngym/CodeExec-v0", "aligngym.envs.code_exec:CodeExecEnv")
register("aligngym/Debate-v0", "aligngym.envs.debate:DebateEnv", multi_agent=True)
register("aligngym/JudgedDebate-v0", "aligngym.envs.judged_debate:JudgedDebateEnv", multi_agent=True)
register("aligngym/SocialSandbox-v0", "aligngym.envs.social_sandbox:SocialSandboxEnv", multi_agent=True)
register("aligngym/SocialGoal-v0", "aligngym.envs.social_goal:SocialGoalEnv", multi_agent=True)
register("aligngym/RewardModel-v0", "aligngym.envs.model_feedback:RewardModelEnv")
register("aligngym/Judge-v0", "aligngym.envs.model_feedback:JudgeEnv")
register("aligngym/Verifier-v0", "aligngym.envs.model_feedback:VerifierEnv")
register("aligngym/CritiqueRefine-v0", "aligngym.envs.model_feedback:CritiqueRefineEnv")
register("aligngym/Terminal-v0", "aligngym.envs.terminal:TerminalEnv")
register("aligngym/TextWorld-v0", "aligngym.envs.textworld:TextWorldEnv")
register("aligngym/ToolUse-v0", "aligngym.envs.tool_use:ToolUseEnv")
register("aligngym/OpenEnv-v0", "aligngym.envs.openenv_env:OpenEnvEnv")
register("aligngym/ReasoningGym-v0", "aligngym.envs.reasoning_gym:ReasoningGymEnv")
register("aligngym/TextWorldGame-v0", "aligngym.envs.textworld_game:TextWorldGameEnv")
