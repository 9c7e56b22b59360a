"""Serve a registered single-agent environment over OpenEnv's protocol (``aligngym serve``), with openenv-core.

The server is openenv-core's own (``create_fastapi_app``: HTTP ``/reset``, ``/step``, ``/state``, ``/schema``,
``/metadata``, ``/health`` and the ``/ws`` session socket); this module only adapts one aligngym env to its
``Environment`` interface. A served env is a reward oracle, so the adapter lets a client do three things and
nothing else: ``reset(seed)``, ``step(message)`` while an episode runs, and read ``state`` (episode id, step
count, done). The env's arguments are fixed when the server starts; its ``info`` stays on the server except
for the reward components, the success flag and the chat messages the policy is shown anyway.
"""

from __future__ import annotations

import functools
import logging
import socket
import uuid
from typing import Any

from openenv.core.env_server.http_server import create_fastapi_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import (
    Action,
    ConcurrencyConfig,
    EnvironmentMetadata,
    Observation,
    State,
)
from openenv.core.utils import run_async_safely
from pydantic import Field

logger = logging.getLogger(__name__)


class TextAction(Action):
    """One assistant reply to the served environment."""

    message: str = Field(..., description="The assistant's reply (the aligngym env's text action)")


class TextObservation(Observation):
    """What the policy may see after a reset or a step; ``reward`` and ``done`` are OpenEnv's own fields."""

    text: str = Field(default="", description="The env's text observation (the next user message)")
    messages: list[dict[str, Any]] = Field(
        default_factory=list, description="Chat messages the env added (all of them after a reset)"
    )
    reward_components: dict[str, float] = Field(default_factory=dict, description="Named parts of reward")
    success: bool | None = Field(default=None, description="Whether the task is achieved; None: no notion")
    terminated: bool = Field(default=False, description="The task ended (done and not cut off)")
    truncated: bool = Field(default=False, description="The episode ran out of turns")
    turn: int = Field(default=0, description="Assistant turns played in this episode")


class EpisodeError(RuntimeError):
    """A request that does not fit the episode (a step before reset or after done, a bad seed)."""


class ServedEnv(Environment):
    """One aligngym env behind OpenEnv's ``Environment``; the server builds one per WebSocket session."""

    # Every instance builds its own aligngym env (sandboxes come from the process-wide capped pool).
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, env_id: str, env_kwargs: dict[str, Any]):
        super().__init__()
        self.env_id, self._env_kwargs = env_id, dict(env_kwargs)
        self._env: Any = None  # built at the first reset: /metadata and /state need none
        self._state = State(episode_id=None, step_count=0)
        self._done = True  # no episode yet: nothing to step
        self._shown = 0  # chat messages already sent to the client

    # -- OpenEnv's interface ------------------------------------------------------------------------
    # No **kwargs: openenv-core passes a reset or step only the parameters the signature names, so a client
    # cannot slip in env arguments or reset options.
    async def reset_async(self, seed: int | None = None, episode_id: str | None = None) -> TextObservation:
        if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
            raise EpisodeError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        if episode_id is not None and (not isinstance(episode_id, str) or len(episode_id) > 255):
            raise EpisodeError("episode_id must be a string of at most 255 characters")
        env = self._built()
        areset = getattr(env, "areset", None)
        self._done = True  # until the reset succeeds
        text, info = await _guarded(self.env_id, areset(seed=seed) if areset else _now(env.reset, seed=seed))
        self._state = State(episode_id=episode_id or uuid.uuid4().hex, step_count=0)
        self._done, self._shown = False, 0
        return self._observation(text, None, False, False, info)

    async def step_async(self, action: TextAction, timeout_s: float | None = None) -> TextObservation:
        if self._state.episode_id is None:
            raise EpisodeError("no episode: reset first")
        if self._done:
            raise EpisodeError("the episode is over: reset to start another")
        self._shown += 1  # the reply itself is the client's, not news to it
        astep = getattr(self._env, "astep", None)
        self._done = True  # a step that fails ends the episode
        out = await _guarded(
            self.env_id, astep(action.message) if astep else _now(self._env.step, action.message)
        )
        text, reward, terminated, truncated, info = out
        self._state.step_count += 1
        self._done = bool(terminated or truncated)
        return self._observation(text, reward, bool(terminated), bool(truncated), info)

    def reset(self, seed: int | None = None, episode_id: str | None = None) -> TextObservation:
        return run_async_safely(self.reset_async(seed=seed, episode_id=episode_id))

    def step(self, action: TextAction, timeout_s: float | None = None) -> TextObservation:  # type: ignore[override]
        return run_async_safely(self.step_async(action))

    @property
    def state(self) -> State:
        # A copy with the done flag: the env's own state (answers, sandboxes) is not the client's to read.
        return State(episode_id=self._state.episode_id, step_count=self._state.step_count, done=self._done)

    def get_metadata(self) -> EnvironmentMetadata:
        from aligngym import __version__
        from aligngym.envs.registry import spec

        return EnvironmentMetadata(
            name=self.env_id, description=spec(self.env_id).description, version=__version__
        )

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()

    # -- helpers ---------------------------------------------------------------------------------------
    def _built(self) -> Any:
        if self._env is None:
            from aligngym.envs.registry import make

            env = make(self.env_id, **self._env_kwargs)
            self._env = getattr(env, "unwrapped", env)  # gymnasium wrappers hide ``areset``
        return self._env

    def _observation(
        self, text: Any, reward: Any, terminated: bool, truncated: bool, info: dict[str, Any]
    ) -> TextObservation:
        messages = list(info.get("messages", []))
        new, self._shown = messages[self._shown :], len(messages)
        components = {k: float(v) for k, v in info.get("reward_components", {}).items()}
        key = getattr(self._env, "success_component", None)
        success = None if key is None or reward is None else components.get(key, 0.0) >= 1.0
        return TextObservation(
            text=str(text),
            messages=[dict(m) for m in new],
            reward_components=components,
            success=success,
            terminated=terminated,
            truncated=truncated,
            turn=self._state.step_count,
            reward=None if reward is None else float(reward),
            done=terminated or truncated,
        )


async def _now(func: Any, *args: Any, **kwargs: Any) -> Any:
    """A plain (sync) env's ``reset`` or ``step`` as an awaitable, like the async core of ours."""
    return func(*args, **kwargs)


async def _guarded(env_id: str, call: Any) -> Any:
    """Await the env's ``call``; a failure reaches the client by its type only and the log in full."""
    try:
        return await call
    except Exception as exc:  # its message may quote what the env keeps from the policy (an answer)
        logger.exception("%s failed", env_id)
        raise EpisodeError(f"the environment failed ({type(exc).__name__}); reset to start over") from None


def build_app(env_id: str, env_kwargs: dict[str, Any], max_sessions: int = 16, idle_timeout_s: float = 600.0):
    """openenv-core's FastAPI app serving ``env_id`` built with ``env_kwargs`` (one env per session)."""
    factory = functools.partial(ServedEnv, env_id, env_kwargs)
    config = ConcurrencyConfig(max_concurrent_envs=max_sessions, session_timeout=idle_timeout_s)
    app = create_fastapi_app(factory, TextAction, TextObservation, concurrency_config=config)
    app.add_exception_handler(EpisodeError, _conflict)  # a client's mistake, not a server error (500)
    return app


async def _conflict(request: Any, exc: Exception) -> Any:
    """HTTP 409 with the one-line reason, for a request that does not fit the episode."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=409, content={"detail": str(exc)})


def serve(app: Any, sock: socket.socket) -> None:
    """Run ``app`` on the bound, listening ``sock`` until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
