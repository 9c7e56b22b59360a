"""Reward signals: verifiers, reward models, judges, critics, self-consistency, peer ratings, rubrics."""

from .base import Feedback, FeedbackResult, Rubric, score
from .verifier import Verifier, answers_agree, extract_answer

__all__ = [
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
]

# Model-backed feedbacks import heavier modules on first use.
_LAZY = {
    "Critic": ".critic",
    "Judge": ".judge",
    "PeerRating": ".peer_rating",
    "RewardModel": ".reward_model",
    "SelfConsistency": ".self_consistency",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
