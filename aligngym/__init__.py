"""aligngym: every alignment signal is an environment.

Importing ``aligngym`` registers every built-in environment under the ``aligngym/`` namespace, so
``gymnasium.make("aligngym/CodeExec-v0")`` works after it.
"""

from aligngym.envs import StepResult, TextEnv, TextSpace, make, register, registered

from .conformance import check_conformance
from .episode import run_episode
from .rollout import RolloutSummary, play_episode, rollout
from .trajectory import Trajectory, TrajectoryWriter, read_trajectories

__version__ = "0.1.0"

__all__ = [
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
]
