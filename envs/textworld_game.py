"""aligngym/TextWorldGame-v0: real TextWorld games (Inform 7, compiled to Z-machine) played through ``textworld``.

``textworld`` (an optional extra: ``pip install 'aligngym[textworld]'``) is imported when an env is built, never
by ``import aligngym``. A game is a given ``game_file`` or one ``tw-make custom`` builds offline from the
generation settings and a seed drawn from the episode's generator; built games are cached on disk
(``$ALIGNGYM_CACHE/textworld``), built aside and renamed into place so parallel workers never see half a game.

The interpreter was written for people, not for a policy that searches for what pays: it takes meta-commands
(``restore`` a state saved by another episode, ``restart``, ``script`` writes files, ``print_state`` dumps the
world), several commands per line, and reports score and win as text the reply could try to forge. So only
one plain game command per reply reaches it (:func:`refusal`); see docs/textworld-game.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import StepResult, TextEnv

# textworld parses game files with one shared TatSu parser that is not thread-safe (two games loading at once
# fail with "pop from empty list"), and loads run in worker threads: every call into textworld holds this.
_TEXTWORLD_LOCK = threading.RLock()  # re-entered: a reset that switches games closes the old one

INSTALL_HINT = "pip install 'aligngym[textworld]'"
#: Longest command sent (the Z-machine's input buffer is about this long; the game's own are far shorter).
MAX_COMMAND_CHARS = 120
#: What a command may be made of: no '.', ',', ';' (the parser's command separators), no quotes, brackets,
#: '<', '*' (its score and win are read from tags and banners in its text), no control bytes (NUL hangs it).
_COMMAND = re.compile(r"[a-z0-9' -]+")
#: Words that make one line several actions ("take key then go north", "drop all", "take a and b").
_SEVERAL_ACTIONS = frozenset({"then", "and", "all", "everything", "each", "every", "except", "but"})
_DIRECTIONS = ("north", "south", "east", "west", "n", "s", "e", "w")
#: The parser's in-world synonyms for the game's verbs (alias -> the verb it stands for).
_ALIASES = {"x": "examine", "l": "look", "i": "inventory", "inv": "inventory", "get": "take", "pick": "take"}
_LABEL = re.compile(r"^(?:>|(?:command|action)\s*:)\s*", re.I)
_FENCE = re.compile(r"`{3,}[\w+-]*")
_MAX_FENCES = 100  # a reply ending in more blank or code-fence lines than this gives no command
_PROMPT = re.compile(r"\n>[^\n]*\Z")  # the input prompt with the status line ("-= Room =-0/3") after it
#: The interpreter's offer once the game is over: the episode has ended, and those commands are refused anyway.
_GAME_OVER_OFFER = re.compile(r"^Would you like to RESTART, RESTORE.*$", re.M)
INSTRUCTIONS = (
    "You are playing a text adventure. Reply with one command per turn; the last line of your reply is sent "
    "to the game (a `command` in backticks is fine). Commands start with one of: {verbs}."
)
REFUSED = "Refused, not sent to the game: {why}. Reply with one game command, e.g. `look` or `go north`."


def _textworld() -> Any:
    """The ``textworld`` module, or an ``ImportError`` saying how to install it."""
    try:
        import textworld
    except ImportError:
        raise ImportError(f"aligngym/TextWorldGame-v0 needs textworld: {INSTALL_HINT}") from None
    return textworld


# -- building and caching games ---------------------------------------------------------------------
@dataclass(frozen=True)
class GameSettings:
    """``tw-make custom`` generation settings (its ``--world-size``, ``--nb-objects``, ``--quest-length``)."""

    world_size: int = 3
    nb_objects: int = 4
    quest_length: int = 2

    def __post_init__(self) -> None:
        for name in ("world_size", "nb_objects", "quest_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def tw_make_args(self, seed: int, output: Path) -> list[str]:
        """The ``tw-make`` arguments that build game ``seed`` at ``output``."""
        return [
            "custom",
            *("--world-size", str(self.world_size), "--nb-objects", str(self.nb_objects)),
            *("--quest-length", str(self.quest_length), "--seed", str(seed)),
            *("--output", str(output), "-f", "--silent"),
        ]

    def cache_name(self, seed: int) -> str:
        """The cache folder of game ``seed``: the settings, the seed and textworld's version (it may change games)."""
        version = _textworld().__version__
        return f"w{self.world_size}-o{self.nb_objects}-q{self.quest_length}-s{seed}-tw{version}"


def cache_root() -> Path:
    """Where built games are kept: ``$ALIGNGYM_CACHE/textworld`` (default ``~/.cache/aligngym/textworld``)."""
    return Path(os.environ.get("ALIGNGYM_CACHE", Path.home() / ".cache" / "aligngym")) / "textworld"


def _tw_make() -> str:
    """The ``tw-make`` beside this interpreter (the one of the installed textworld), else the one on PATH."""
    here = str(Path(sys.executable).parent)
    found = shutil.which("tw-make", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if found is None:
        raise ImportError(f"aligngym/TextWorldGame-v0 needs textworld's tw-make: {INSTALL_HINT}")
    return found


def build_game(settings: GameSettings, seed: int, timeout_s: float = 600.0) -> Path:
    """The ``.z8`` file of game ``seed`` (``tw-make custom ... --seed seed``), built once and then cached.

    The game is built in a temporary folder and renamed into place: concurrent builders race harmlessly (the
    first rename wins), and a reader never sees a game without its ``.json``.
    """
    folder = cache_root() / settings.cache_name(seed)
    game = folder / "game.z8"
    if game.is_file() and game.with_suffix(".json").is_file():
        return game
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        args = [_tw_make(), *settings.tw_make_args(seed, tmp / "game.z8")]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, cwd=tmp, check=False)
        if done.returncode != 0 or not (tmp / "game.json").is_file():
            tail = (done.stderr or done.stdout).strip()[-600:]
            raise RuntimeError(f"tw-make failed to build game {seed} with {settings}: {tail}")
        try:
            tmp.rename(folder)
        except OSError:
            pass  # another worker renamed the same game into place first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not game.is_file():
        raise RuntimeError(f"built game {seed} did not reach the cache at {folder}")
    return game


# -- what reaches the interpreter --------------------------------------------------------------------
def extract_command(reply: str) -> str:
    """The command a reply gives: its last line that is not a code fence, without backticks, quotes or bold
    marks, a ``>`` prompt or ``Action:`` label, or a final full stop; whitespace collapsed, lower case.

    Read from the end with ``str.rfind``, past at most ``_MAX_FENCES`` blank or fence lines: a huge reply costs
    at most one pass.
    """
    reply = reply.rstrip("` \t\r\n")  # closing fences and blank lines, in one C-speed pass
    end = len(reply)
    for _ in range(_MAX_FENCES + 1):
        if end <= 0:
            break
        start = reply.rfind("\n", 0, end) + 1
        line = reply[start:end].strip()
        end = start - 1
        if line and not _FENCE.fullmatch(line):
            line = _LABEL.sub("", line.strip('`*"').strip()).rstrip(".!").strip('`*"')
            return " ".join(line.split()).lower()
    return ""


def allowed_first_words(verbs: list[str]) -> frozenset[str]:
    """The words a command may start with: the game's own verbs, their parser synonyms, and directions."""
    words = set(verbs) | {alias for alias, verb in _ALIASES.items() if verb in verbs}
    return frozenset(words | set(_DIRECTIONS) if "go" in verbs else words)


def refusal(command: str, first_words: frozenset[str], admissible: list[str]) -> str | None:
    """Why ``command`` must not reach the interpreter, or None when it is one plain game command."""
    if not command:
        return "the reply has no command"
    if len(command) > MAX_COMMAND_CHARS:
        return f"the command is longer than {MAX_COMMAND_CHARS} characters"
    if command in admissible:
        return None  # the game's own list: nothing in it is a meta-command or several actions
    if not _COMMAND.fullmatch(command):
        return "a command is one action in plain letters, digits, spaces, hyphens and apostrophes"
    words = command.split()
    if words[0] not in first_words:
        return f"{words[0]!r} is not one of this game's commands ({', '.join(sorted(first_words))})"
    several = _SEVERAL_ACTIONS.intersection(words)
    if several:
        return f"one action per command ({', '.join(sorted(several))!r} makes several)"
    return None


def clean_feedback(text: str) -> str:
    """The game's text without its ASCII-art title, input prompt, status line and game-over offer."""
    text = _GAME_OVER_OFFER.sub("", _PROMPT.sub("", text))
    lines = text.splitlines()
    while lines and not any(c.isalnum() for c in lines[0]):
        lines.pop(0)  # the title banner is drawn with _ | \ / $ only
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def progress(score: float, max_score: float, won: bool) -> float:
    """How much of the game is done: ``score / max_score`` clipped to [0, 1], and 1.0 once the game is won."""
    if won:
        return 1.0
    if max_score <= 0:
        return 0.0
    return min(max(float(score) / float(max_score), 0.0), 1.0)


# -- the environment --------------------------------------------------------------------------------
class TextWorldGameEnv(TextEnv):
    """Play a real TextWorld game (built offline with tw-make); reward: the game's own score, normalised."""

    success_component = "won"
    description = "Real TextWorld games (Inform 7, built offline with tw-make): the game's own score and win."

    def __init__(
        self,
        game_file: str | os.PathLike[str] | None = None,
        world_size: int = 3,
        nb_objects: int = 4,
        quest_length: int = 2,
        num_games: int = 1 << 16,
        max_turns: int = 50,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        self._tw = _textworld()
        self.settings = GameSettings(world_size, nb_objects, quest_length)
        if isinstance(num_games, bool) or not isinstance(num_games, int) or num_games < 1:
            raise ValueError(f"num_games must be an integer >= 1, got {num_games!r}")
        self.num_games = num_games
        self.game_file = None if game_file is None else Path(game_file).expanduser().resolve()
        if self.game_file is not None and not (
            self.game_file.suffix == ".z8"
            and self.game_file.is_file()
            and self.game_file.with_suffix(".json").is_file()
        ):
            raise ValueError(f"game_file must be a TextWorld .z8 game with its .json beside it: {game_file}")
        #: The game being played (a ``.z8`` path) and the seed it was built from (None for a given file).
        self.game_path: Path | None = None
        self.game_seed: int | None = None
        self._game: Any = None  # textworld's environment for ``game_path``, kept across episodes of one game
        self._first_words: frozenset[str] = frozenset()
        self._state: Any = None
        self._best = 0.0

    async def anew_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        # Building (seconds, cold cache) and loading a game block; a rollout's other episodes keep going.
        path, seed = self._choose(options or {})
        interpreter_seed = int(self.np_random.integers(1, 1 << 31))  # 0 would mean "seeded from the clock"
        if path is None:
            path = await asyncio.to_thread(build_game, self.settings, seed)
        state = await asyncio.to_thread(self._start, path, interpreter_seed)
        self.game_path, self.game_seed, self._state, self._best = path, seed, state, 0.0
        self._first_words = allowed_first_words(list(state["verbs"] or []))
        intro = INSTRUCTIONS.format(verbs=", ".join(sorted(self._first_words)))
        return f"{intro}\n\n{clean_feedback(state['feedback'])}", self._game_info(None, None)

    def turn(self, action: str) -> StepResult:
        command = extract_command(action)
        why = refusal(command, self._first_words, list(self._state["admissible_commands"] or []))
        if why is not None:
            return self._result(REFUSED.format(why=why), command, refused=why)
        try:
            with _TEXTWORLD_LOCK:
                state, _, _ = self._game.step(command)
        except Exception as exc:  # its state is unknown now: end the episode, keep what it earned
            self._close_game()
            error = f"{type(exc).__name__}: {exc}"
            return self._result("The game's interpreter failed; the episode ends.", command, error=error)
        self._state = state
        return self._result(clean_feedback(state["feedback"]), command)

    def close(self) -> None:
        super().close()
        self._close_game()

    # -- helpers ----------------------------------------------------------------------------------------
    def _choose(self, options: dict[str, Any]) -> tuple[Path | None, int | None]:
        """This episode's game: the given file, ``options["game_seed"]``, else a seed drawn from ``np_random``."""
        if self.game_file is not None:
            return self.game_file, None
        seed = options.get("game_seed")
        if seed is None:
            return None, int(self.np_random.integers(0, self.num_games))
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"options['game_seed'] must be an integer >= 0, got {seed!r}")
        return None, seed

    def _start(self, path: Path, interpreter_seed: int) -> Any:
        """Reset the game at ``path`` (started afresh when it is another game) and return its first state."""
        with _TEXTWORLD_LOCK:
            return self._start_locked(path, interpreter_seed)

    def _start_locked(self, path: Path, interpreter_seed: int) -> Any:
        if self._game is None or self.game_path != path:
            self._close_game()
            infos = self._tw.EnvInfos(
                admissible_commands=True, score=True, max_score=True, won=True, lost=True
            )
            self._game = self._tw.start(str(path), infos)
        self._game.seed(interpreter_seed)
        return self._game.reset()

    def _close_game(self) -> None:
        if self._game is not None:
            game, self._game = self._game, None
            with _TEXTWORLD_LOCK:
                game.close()

    def _result(
        self, text: str, command: str, refused: str | None = None, error: str | None = None
    ) -> StepResult:
        """The step's result: reward is the rise of the episode's best progress, so nothing is paid twice."""
        state = self._state
        won, lost = error is None and bool(state["won"]), error is None and bool(state["lost"])
        now = progress(state["score"] or 0, state["max_score"] or 0, won)
        reward = max(now - self._best, 0.0)
        self._best = max(self._best, now)
        info = self._game_info(command, refused)
        if error is not None:
            info["interpreter_error"] = error
        return StepResult(
            observation=text,
            reward=reward,
            terminated=won or lost or error is not None,
            components={"won": float(won), "score": now, "refused": float(refused is not None)},
            info=info,
        )

    def _game_info(self, command: str | None, refused: str | None) -> dict[str, Any]:
        """What the caller sees besides the text: never the walkthrough, quest facts or the game's files."""
        state = self._state
        return {
            "admissible_commands": sorted(state["admissible_commands"] or []),
            "score": int(state["score"] or 0),
            "max_score": int(state["max_score"] or 0),
            "won": bool(state["won"]),
            "lost": bool(state["lost"]),
            "command": command,
            "refused": refused or "",
        }
