"""The commands in the README and docs/ must stay valid: tools exist and accept the flags, configs load, test
files exist. (Each tool's behaviour is tested in its own test file with tiny settings.)"""

from __future__ import annotations

import glob
import importlib
import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) + [os.path.join(REPO, f) for f in ("README.md",
                                                                                           "CONTRIBUTING.md")]


def _commands(path: str) -> list[str]:
    """Shell commands inside ```bash blocks, with backslash continuations joined."""
    text = open(path).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


ALL = [(os.path.relpath(p, REPO), c) for p in DOCS for c in _commands(p)]


def test_docs_have_commands():
    assert any("tools." in c for _, c in ALL)


@pytest.mark.parametrize("doc,command", ALL, ids=[f"{d}:{c[:60]}" for d, c in ALL])
def test_documented_command_is_valid(doc, command):
    argv = shlex.split(command)
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]                                  # leading VAR=value environment settings
    prog = os.path.basename(argv[0])
    if prog == "make":
        makefile = open(os.path.join(REPO, "Makefile")).read()
        for target in argv[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{doc}: no make target {target}"
        return
    if prog in ("pytest",) or argv[1:3] == ["-m", "pytest"]:
        for arg in argv[1:]:
            if arg.startswith("tests/"):
                assert os.path.exists(os.path.join(REPO, arg.split("::")[0])), f"{doc}: {arg} does not exist"
        return
    if "-m" in argv and argv[argv.index("-m") + 1].startswith("tools."):
        module = argv[argv.index("-m") + 1]
        args = argv[argv.index("-m") + 2:]
    elif prog.startswith("hgfpn-"):                     # the console script of tools/<name>.py (docs/install.md)
        module = "tools." + prog[len("hgfpn-"):].replace("-", "_")
        args = argv[1:]
    elif argv[1:2] == ["-c"]:
        code = argv[2]
        compile(code, f"{doc}: python -c", "exec")                 # a syntax error fails here
        for module in re.findall(r"from ([\w.]+) import", code) + re.findall(r"^import ([\w.]+)", code):
            importlib.import_module(module)                          # so does a module that moved
        return
    elif len(argv) > 1 and argv[1].endswith(".py"):
        assert os.path.isfile(os.path.join(REPO, argv[1])), f"{doc}: {argv[1]} does not exist"
        return
    else:
        pytest.skip(f"not a repository command: {command}")
    tool = importlib.import_module(module)
    parsed = tool.get_args_parser().parse_intermixed_args(args)  # exits (SystemExit) on unknown flags
    config = getattr(parsed, "config", None)
    # The repository's own configs load; a user's (configs/my.yaml, ~/..., my_config.yaml) are placeholders.
    if config and config.startswith("configs/") and "/my" not in config and "X." not in config:
        from engine.tasks.registry import load_config

        load_config(os.path.join(REPO, config), [o for o in getattr(parsed, "overrides", []) or [] if "=" in o])


# Code the pages name (configs/ are left out: the pages also name configs a user writes, e.g. configs/my.yaml).
REFERENCE = re.compile(r"\b((?:engine|models|datasets|tools|bench|tests)(?:[./][A-Za-z_][A-Za-z0-9_-]*)+(?:\.py|/)?)")


def _resolves(ref: str) -> bool:
    """A path (``engine/train/loop.py``, ``engine/tasks/``) exists, or a dotted name (``engine.api.load``)
    imports: a module, then attributes of it."""
    if "/" in ref:
        path = os.path.join(REPO, ref)
        return os.path.exists(path) or os.path.exists(path + ".py")
    parts = ref.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_documented_files_and_modules_exist(doc):
    """A page that names a file or module of the repository names one that is there (they move)."""
    text = open(doc).read()
    refs = {m.group(1).rstrip(".") for m in REFERENCE.finditer(text)}
    stale = sorted(r for r in refs if not (r.endswith(".py") and "/" not in r) and not _resolves(r))
    assert not stale, f"{os.path.relpath(doc, REPO)} names what does not exist: {stale}"
