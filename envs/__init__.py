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
