"""The library's shape: no import cycle, no class checks on models outside models/, Ray started
in one module, a command line that answers --help without torch or Ray, one model contract."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from clipsep_ray.commands import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "clipsep_ray")
MODEL_CLASSES = {"CLIPSep", "LabelSep", "PITSep", "MaskNet", "SeparationModel"}


def _modules() -> dict[str, tuple[str, ast.Module]]:
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                with open(path) as fh:
                    out[name] = (path, ast.parse(fh.read(), path))
    return out


def import_graph(modules) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (function-level imports too)."""
    graph = {}
    for name, (_, tree) in modules.items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    assert find_cycle(import_graph(_modules())) is None


def test_no_isinstance_on_model_classes_outside_models():
    bad = []
    for name, (path, tree) in _modules().items():
        if name.startswith("clipsep_ray.models"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | \
                        {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if names & MODEL_CLASSES:
                    bad.append(f"{path}:{node.lineno}")
            if isinstance(node, ast.Compare) and any(isinstance(n, ast.Attribute) and n.attr == "arch"
                                                     for n in ast.walk(node)):
                if name != "clipsep_ray.config":
                    bad.append(f"{path}:{node.lineno} (branches on model.arch)")
    assert not bad, bad


def test_ray_init_is_called_in_one_module():
    callers = set()
    for name, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init" \
                    and getattr(node.func.value, "id", None) == "ray":
                callers.add(name)
    assert callers == {"clipsep_ray.runtime"}


def _imports_of(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}


def test_importing_the_cli_loads_neither_torch_nor_ray():
    mods = _imports_of("import clipsep_ray.cli")
    assert "clipsep_ray.cli" in mods
    assert not {"torch", "ray"} & mods


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_loads_neither_torch_nor_ray(command):
    # sys.modules, not -X importtime: commands are loaded with importlib, which importtime does not time.
    code = ("import io, sys, contextlib\nfrom clipsep_ray.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main([{command!r}, '--help'])\n"
            "    except SystemExit:\n        pass\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'clipsep_ray')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    mods = set(out.stdout.split())
    assert f"clipsep_ray.commands.{COMMANDS[command]}" in mods
    assert not {m for m in mods if m.split(".")[0] in ("torch", "ray")}


def test_every_model_offers_the_contract():
    import torch

    from clipsep_ray.config import ARCHS, load_config
    from clipsep_ray.models.base import QUERY_KINDS, SeparationModel
    from clipsep_ray.models.registry import MODELS, build_model

    assert tuple(MODELS) == ARCHS
    for arch in ARCHS:
        cfg = load_config("tiny", [f"model.arch={arch}", "model.num_labels=3", "model.unet_width=4"])
        model = build_model(cfg.model).eval()
        assert isinstance(model, SeparationModel) and model.arch == arch
        assert set(model.query_columns) <= set(QUERY_KINDS)
        feats = model.features(torch.randn(1, 1, cfg.audio.model_bins, cfg.audio.num_frames))
        for kind, column in model.query_columns.items():
            values = None if column is None else (torch.tensor([0, 1]) if column == "label_id"
                                                  else torch.randn(2, cfg.model.embed_dim))
            proj = model.project(model.query_embeddings(values))
            logits = model.mask_logits(feats, proj)
            assert logits.shape[1] == model.num_outputs(proj), (arch, kind)
        assert isinstance(model.method_name(cfg.model, cfg.train.mode), str)


def test_exit_codes_for_bad_usage(capsys):
    from clipsep_ray.cli import main

    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["evaluate"])  # required options missing
    assert e.value.code == 2
    assert main(["train", "--config", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_comments_cite_files_inside_the_repository():
    """The project's notes outside the repository are not there for a user: cite docs/ instead."""
    out = subprocess.run(["git", "grep", "-n", "-E", r"REFERENCE\.md|DESIGN\.md|SETUP-NOTES|\.\./shared", "--",
                          ":!tests/unit/test_structure.py"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and not out.stdout, out.stdout  # git grep: 1 = no match
    for page in ("METHOD.md", "ARCHITECTURE.md", "DECISIONS.md"):
        assert os.path.exists(os.path.join(ROOT, "docs", page))


def test_cited_doc_sections_exist():
    """Every ``docs/PAGE.md, "Section"`` in the code names a heading or a bold entry of that page."""
    import re

    cite = re.compile(r'docs/(\w+\.md), "([^"]+)"')
    found = 0
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    for f in tracked:
        if f.endswith((".py", ".yaml", ".toml")) and not f.endswith("test_structure.py"):
            with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
                for page, section in cite.findall(fh.read()):
                    with open(os.path.join(ROOT, "docs", page), encoding="utf-8") as doc:
                        text = doc.read()
                    assert f"## {section}" in text or f"**{section}" in text, (f, page, section)
                    found += 1
    assert found >= 5
