"""What a Dockerfile does, read from its instructions: base image, ENV, COPY sources, RUN lines."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from infra_checks.files import DOCKERFILE


def _dockerfile_lines(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf = f"{buf} {line[:-1].strip()}" if line.endswith("\\") else f"{buf} {line}"
        if not line.endswith("\\"):
            instr, _, args = buf.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
            buf = ""
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def dockerfile_facts(path: Path = DOCKERFILE) -> dict:
    env: dict[str, str] = {}
    facts: dict = {"copy_sources": [], "run": [], "from": None, "user": None, "workdir": None}
    for instr, args in _dockerfile_lines(path):
        if instr == "ARG" and "=" in args:
            k, _, v = args.partition("=")
            env[k] = v.strip('"')
        elif instr == "FROM":
            facts["from"] = _expand(args.split()[0], env)
        elif instr == "ENV":
            for item in shlex.split(args):
                k, _, v = item.partition("=")
                env[k] = _expand(v, env)
        elif instr == "WORKDIR":
            facts["workdir"] = _expand(args, env)
        elif instr == "USER":
            facts["user"] = args
        elif instr == "COPY":
            parts = [a for a in shlex.split(args) if not a.startswith("--")]
            facts["copy_sources"] += parts[:-1]
        elif instr == "RUN":
            facts["run"].append(_expand(args, env))
    facts["env"] = env
    return facts


APP_HOME = dockerfile_facts()["env"].get("APP_HOME", "")
