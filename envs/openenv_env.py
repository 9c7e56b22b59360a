"""aligngym/OpenEnv-v0: play an environment served over OpenEnv's protocol, through openenv-core's own client."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from .base import StepResult, TextEnv

#: Observation keys that are OpenEnv's envelope, not the environment's own fields.
_ENVELOPE = ("reward", "done", "metadata")


class OpenEnvEnv(TextEnv):
    """A running OpenEnv server (``base_url``) as a text environment: one WebSocket session per env.

    The reply goes to the server as the action ``{action_field: reply}`` (``"message"`` by default: the field of
    OpenEnv's ``openenv init`` template and of ``aligngym serve``). The text observation is the server
    observation's ``observation_field``; when it is not given, the observation's only string field, else the
    whole observation as JSON. Reward and done are the server's (a missing reward is 0); an episode the
    server has not ended by ``max_turns`` is truncated. The server's ``reward_components`` (and its boolean
    ``success`` as the component ``success``) become this env's components, so ``success_component`` can
    name one of them; the whole server observation is ``info["openenv_observation"]``. ``reset(seed=)``
    sends the seed; a server whose environment takes none ignores it. ``close`` ends the session.
    """

    description = "A running OpenEnv server (base_url=...) played through openenv-core's client."

    def __init__(
        self,
        base_url: str | None = None,
        action_field: str = "message",
        observation_field: str | None = None,
        success_component: str | None = None,
        max_turns: int = 10,
        connect_timeout_s: float = 10.0,
        message_timeout_s: float = 60.0,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if not base_url or not isinstance(base_url, str):
            raise ValueError(
                "aligngym/OpenEnv-v0 needs base_url, the address of a running OpenEnv server: "
                '--env-kwargs \'{"base_url": "http://127.0.0.1:8000"}\''
            )
        if not action_field:
            raise ValueError("action_field must name the server action's text field, e.g. 'message'")
        try:
            from openenv.core import GenericEnvClient
        except ImportError:
            raise ImportError(
                "aligngym/OpenEnv-v0 needs openenv-core: pip install 'aligngym[openenv]'"
            ) from None
        self.base_url = base_url
        self.action_field = action_field
        self.observation_field = observation_field
        self.success_component = success_component
        # The sync wrapper keeps the socket on its own loop thread, so every episode may come from any loop.
        self._client = GenericEnvClient(
            base_url=base_url, connect_timeout_s=connect_timeout_s, message_timeout_s=message_timeout_s
        ).sync()
        self._connected = False
        self._seed: int | None = None

    async def anew_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        result = await asyncio.to_thread(self._reset, self._seed)
        return self._text(result.observation), {"openenv_observation": result.observation}

    async def aturn(self, action: str) -> StepResult:
        result = await asyncio.to_thread(self._live().step, {self.action_field: action})
        observation = result.observation if isinstance(result.observation, dict) else {}
        reward = float(result.reward) if result.reward is not None else 0.0
        return StepResult(
            observation=self._text(observation),
            reward=reward if math.isfinite(reward) else 0.0,
            terminated=bool(result.done),
            components=_components(observation),
            info={"openenv_observation": observation},
        )

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict]:
        # The server picks its episode from the seed as given (``reset`` comes here too).
        self._seed = seed
        return await super().areset(seed=seed, options=options)

    def close(self) -> None:
        super().close()
        client, self._client = self._client, None
        if client is not None:  # the session ends and the client's loop thread stops; twice is harmless
            client.close()

    # -- helpers ---------------------------------------------------------------------------------------
    def _live(self) -> Any:
        """The session's client; an env used after ``close`` says so instead of reconnecting."""
        if self._client is None:
            raise RuntimeError("aligngym/OpenEnv-v0 is closed")
        return self._client

    def _reset(self, seed: int | None) -> Any:
        client = self._live()
        if not self._connected:
            try:
                client.connect()
            except ConnectionError as exc:
                raise ConnectionError(f"cannot reach the OpenEnv server at {self.base_url}: {exc}") from None
            self._connected = True
        return client.reset(seed=seed) if seed is not None else client.reset()

    def _text(self, observation: Any) -> str:
        """The text the policy reads from one server observation."""
        if not isinstance(observation, dict):
            return str(observation)
        fields = {k: v for k, v in observation.items() if k not in _ENVELOPE}
        if self.observation_field is not None:
            if self.observation_field not in fields:
                raise KeyError(
                    f"the server's observation has no {self.observation_field!r}: {sorted(fields)}"
                )
            value = fields[self.observation_field]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        texts = [v for v in fields.values() if isinstance(v, str)]
        if len(texts) == 1:
            return texts[0]
        return json.dumps(fields, ensure_ascii=False, sort_keys=True, default=str)


def _components(observation: dict[str, Any]) -> dict[str, float]:
    """The server's named reward parts (numbers only) and its boolean ``success`` as a 0/1 component."""
    parts = observation.get("reward_components")
    found = {
        str(k): float(v)
        for k, v in (parts.items() if isinstance(parts, dict) else ())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    if isinstance(observation.get("success"), bool):
        found["success"] = float(observation["success"])
    return found
