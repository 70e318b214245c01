"""Just enough Dockerfile and .dockerignore parsing for the image tests (no container engine)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY…
    value: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of ENTRYPOINT/CMD, None for the shell form."""
        try:
            parsed = json.loads(self.value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None

    def flags(self) -> dict[str, str]:
        """`--from=x`, `--mount=type=bind,from=x,…` options at the start of COPY/RUN."""
        out: dict[str, str] = {}
        for word in shlex.split(self.value):
            if not word.startswith("--"):
                break
            key, _, value = word[2:].partition("=")
            out[key] = value if key not in out else out[key] + ";" + value
        return out


@dataclass
class Stage:
    name: str | None
    base: str  # image reference with global ARGs substituted, or an earlier stage's name
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def names(self) -> set[str]:
        return {s.name for s in self.stages if s.name}

    def chain(self, name: str) -> list[Stage]:
        """The stage and its FROM ancestors inside this file, the stage itself last."""
        out = [self.stage(name)]
        while out[0].base in self.names():
            out.insert(0, self.stage(out[0].base))
        return out

    def dependencies(self, name: str) -> set[str]:
        """Every stage whose content can reach `name`: FROM parents, COPY --from, RUN --mount from=."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            stage = self.stage(current)
            refs = [stage.base]
            for ins in stage.instructions:
                flags = ins.flags()
                if ins.keyword == "COPY" and "from" in flags:
                    refs.append(flags["from"])
                for mount in flags.get("mount", "").split(";"):
                    opts = dict(o.partition("=")[::2] for o in mount.split(",") if o)
                    if "from" in opts:
                        refs.append(opts["from"])
            todo.extend(r for r in refs if r in self.names())
        return seen

    def last(self, name: str, keyword: str) -> Instruction | None:
        """The instruction in effect for a target (the last one along its FROM chain)."""
        found = None
        for stage in self.chain(name):
            for ins in stage.of(keyword):
                found = ins
        return found


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments (and parser directives), also between continuation lines
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def substitute(value: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            base = substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, base))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}: {keyword} before the first FROM")
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value))
    return Dockerfile(global_args, stages)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`)."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(.*/)?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/") or "."
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def is_ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored
