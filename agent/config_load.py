"""Reading a config file: YAML with line numbers, environment overrides, and problems that name key and line.

Runs wherever a config is read: the daemon's main thread (at start and on
SIGHUP) and the CLI tools. :func:`parse` never raises for a bad config: it
returns every problem it found, each ``FILE:LINE: key.path: what`` (or
``PATROL_AGENT__...: ...`` for a value from the environment), so that one
mistake never hides the others; :func:`load` raises them as a
:class:`ConfigError`.

What a config file may not do: YAML anchors and aliases (an "alias bomb"
expands to gigabytes), tags beyond plain data (``!!python/...``), more than
1 MiB, duplicate keys. Problems never show the value of an unknown key (a
mis-cased ``Password:`` must not print the password), of a secret, or of
anything that came from the environment; other values are shown truncated,
and URL credentials are masked.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from agent.config import ALLOW_ENV_SECURITY, ENV_PREFIX, SECURITY_KEYS, AgentConfig
from agent.errors import ConfigError

MAX_FILE_BYTES = 1 << 20
MAX_SECRET_BYTES = 4096
KeyPath = tuple[str | int, ...]


def dotted(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


@dataclass
class Loaded:
    """What :func:`parse` found: the config (None if it does not validate) and where each key came from."""

    path: Path
    data: dict[str, Any] | None = None
    cfg: AgentConfig | None = None
    problems: list[str] = field(default_factory=list)
    lines: dict[KeyPath, int] = field(default_factory=dict)
    env: dict[KeyPath, str] = field(default_factory=dict)  # key path -> the variable that set it

    def where(self, loc: KeyPath) -> str:
        """``FILE:LINE`` of ``loc`` (or of its closest ancestor in the file), or the variable that set it."""
        for depth in range(len(loc), -1, -1):
            if loc[:depth] in self.env:
                return self.env[loc[:depth]]
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in self.lines:
                return f"{self.path}:{self.lines[loc[:depth]]}"
        return str(self.path)

    def from_env(self, loc: KeyPath) -> bool:
        return any(loc[:depth] in self.env for depth in range(len(loc) + 1))

    @property
    def overrides(self) -> list[str]:
        """The keys set from the environment, for the start-up log (never their values)."""
        return [f"{dotted(loc)} (from {name})" for loc, name in sorted(self.env.items(), key=lambda i: i[1])]


class _Loader(yaml.SafeLoader):
    """Plain data only: no anchors, no aliases (and so no merge keys)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in the config", mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors (&name) are not allowed in the config", mark)
        return super().compose_node(parent, index)


def _walk(node: yaml.Node, loc: KeyPath, loaded: Loaded) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key: the schema refuses it
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first:
                loaded.problems.append(f"{loaded.path}:{line}: {dotted((*loc, key))}: duplicate key "
                                       f"(first on line {first[key]})")
            else:
                first[key] = line
            loaded.lines[(*loc, key)] = line
            _walk(value_node, (*loc, key), loaded)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            loaded.lines[(*loc, index)] = item.start_mark.line + 1
            _walk(item, (*loc, index), loaded)


def _read(loaded: Loaded) -> Any:
    path = loaded.path
    try:
        with path.open("rb") as src:
            raw = src.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        loaded.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    if len(raw) > MAX_FILE_BYTES:
        loaded.problems.append(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB: not a config file")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        loaded.problems.append(f"{path}: not UTF-8 text")
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _walk(node, (), loaded)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        loaded.problems.append(f"{path}{place}: YAML error: {what}")
    except RecursionError:
        loaded.problems.append(f"{path}: nested too deep")
    finally:
        loader.dispose()
    return None


def is_security(loc: KeyPath) -> bool:
    return any(loc[: len(key)] == key or key[: len(loc)] == loc for key in SECURITY_KEYS)


def apply_env(loaded: Loaded, data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply ``PATROL_AGENT__...`` overrides to ``data`` in place, recording each in ``loaded.env``."""
    allowed = data.get(ALLOW_ENV_SECURITY) is True  # what the FILE says, before any override
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            loaded.problems.append(f"{name}: empty key level in the variable name")
            continue
        loc: KeyPath = tuple(int(p) if p.isdigit() else p for p in parts)
        if is_security(loc) and not (allowed and loc[:1] != (ALLOW_ENV_SECURITY,)):
            loaded.problems.append(
                f"{name}: {dotted(loc)} is a security setting: the environment may not change it "
                f"(unless the config file says {ALLOW_ENV_SECURITY}: true)")
            continue
        problem = _set_path(data, parts, _env_value(environ[name]), AgentConfig)
        if problem:
            loaded.problems.append(f"{name}: {problem}")
        else:
            loaded.env[loc] = name


def _env_value(text: str) -> Any:
    """Numbers and booleans stay text (pydantic converts them by the key's type,
    so a version "1.3" stays "1.3"); lists and mappings are read as YAML flow."""
    if text.strip() in ("null", "~"):
        return None
    if text.lstrip().startswith(("[", "{")) and len(text) <= 4096:
        try:
            return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader without aliases
        except (yaml.YAMLError, RecursionError):
            return text
    return text


def _set_path(data: Any, path: list[str], value: Any, model: Any) -> str | None:
    node = data
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) > len(node):
                return f"{'.'.join(path[:depth])}[{key}]: no such list item"
            index = int(key)
            if last:
                node[index:index + 1] = [value]
                return None
            node = node[index]
            continue
        if not isinstance(node, dict):
            return f"{'.'.join(path[:depth])}: not a mapping in the file"
        if model is not None and isinstance(model, type) and issubclass(model, BaseModel):
            if key not in model.model_fields:
                return f"unknown key {'.'.join(path[:depth + 1])}{_suggest(key, model.model_fields)}"
            model = _model_of(model.model_fields[key].annotation)
        if last:
            node[key] = value
            return None
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        node = child
    return None


def _model_of(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _suggest(key: str, choices: Mapping[str, Any]) -> str:
    import difflib  # only for a config with an unknown key: the running daemon does not hold it

    close = difflib.get_close_matches(key.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


def _got(value: Any, loc: KeyPath, loaded: Loaded) -> str:
    """`` (got ...)`` for scalars that are safe to show, truncated; nothing otherwise."""
    if loaded.from_env(loc) or isinstance(value, dict | list):
        return ""
    if re.search(r"password|secret|token|key_pass", dotted(loc), re.IGNORECASE):
        return " (got ***)"
    shown = _URL_CREDENTIALS.sub(r"\1***@", repr(value))
    return f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"


def describe(error: ValidationError, loaded: Loaded) -> list[str]:
    """pydantic's errors as ``WHERE: key.path: what is wrong (got ...)`` lines."""
    problems = []
    for item in error.errors():
        loc: KeyPath = tuple(item["loc"])
        head = f"{loaded.where(loc)}: {dotted(loc)}"
        kind = item["type"]
        if kind == "missing":
            problems.append(f"{head}: required key is missing")
        elif kind == "extra_forbidden":  # never its value: it may be a mis-cased secret
            parent = _parent_model(loc[:-1])
            hint = _suggest(str(loc[-1]), parent.model_fields) if parent else ""
            problems.append(f"{head}: unknown key{hint}")
        else:
            msg = str(item["msg"]).removeprefix("Value error, ")
            problems.append(f"{head}: {msg[0].lower() + msg[1:]}{_got(item['input'], loc, loaded)}")
    return problems


def _parent_model(loc: KeyPath) -> Any:
    model: Any = AgentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part].annotation)
    return model


def read_secret(path: Path) -> tuple[str | None, str | None]:
    """(the secret, None) or (None, the problem): a file not readable or writable by others, nor
    writable by its group (0600, or 0640 root:patrol-agent)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    with os.fdopen(fd, "rb") as src:
        mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        if mode & 0o026:
            whom = "readable by others" if mode & 0o004 else "writable by group or others"
            return None, f"{path} is {whom} ({mode:04o}): chmod 0640 (root:patrol-agent) or 0600"
        raw = src.read(MAX_SECRET_BYTES + 1)
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not text or len(raw) > MAX_SECRET_BYTES:
        return None, f"{path}: {'empty' if not text else 'too large for a password'}"
    return text, None


def parse(path: Path, environ: Mapping[str, str] | None = None) -> Loaded:
    """Read, override and validate ``path``; every problem in ``Loaded.problems``, none raised."""
    loaded = Loaded(Path(path))
    data = _read(loaded)
    if data is None:
        return loaded
    if not isinstance(data, dict):
        loaded.problems.append(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
        return loaded
    loaded.data = data
    apply_env(loaded, data, os.environ if environ is None else environ)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        loaded.problems.extend(describe(exc, loaded))
        return loaded
    if cfg.mqtt.password_file is not None:
        secret, problem = read_secret(cfg.mqtt.password_file)
        if problem:
            loaded.problems.append(f"{loaded.where(('mqtt', 'password_file'))}: mqtt.password_file: {problem}")
            return loaded
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"password": SecretStr(secret or "")})})
    loaded.cfg = cfg
    return loaded


def load(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override and validate; raise :class:`ConfigError` with every problem."""
    loaded = parse(path, environ)
    if loaded.problems or loaded.cfg is None:
        raise ConfigError(loaded.problems)
    return loaded.cfg
