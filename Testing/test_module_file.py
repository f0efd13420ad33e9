"""KidneyTumorSeg.py run as Slicer runs it, with only Slicer's Qt layer faked (slicer_app_fake.py):
in a fresh Slicer (no nibabel, no torch) the panel starts and offers the install, the console API
raises a RuntimeError saying how to install, the self-test skips its logic part and Reload forgets
the library; once everything is there the controller is built and the bundle folder box behaves."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer")

FAKE_APP = Path(__file__).resolve().parent / "slicer_app_fake.py"


def run_module(scenario: str, *blocked: str) -> dict:
    done = subprocess.run([sys.executable, str(FAKE_APP), scenario, *blocked], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def fresh() -> dict:
    return run_module("fresh", "nibabel", "torch")


def test_a_fresh_slicer_shows_the_install_state_and_imports_nothing_it_lacks(fresh):
    assert fresh["errors"] == [] and fresh["controller"] is False
    assert fresh["imported"] == []  # neither nibabel, torch nor the controller
    view = fresh["view"]
    assert view["installDependenciesButton"]["visible"] is True
    assert view["locateButton"]["enabled"] is False and view["segmentButton"]["enabled"] is False
    assert view["statusLabel"]["text"] == "Install dependencies: PyTorch>=2.4 (through the PyTorch extension), nibabel>=5.0."


def test_a_second_click_while_installing_starts_no_second_install(fresh):
    clicks = fresh["install_clicks"]
    assert len(clicks["questions"]) == 1  # the second click, delivered while the installer asked, asked nothing
    assert clicks["questions"][0]["button_enabled"] is False and clicks["questions"][0]["status"] == "Installing dependencies…"
    assert clicks["button_enabled_after"] is True and clicks["errors"] == []  # declining is no error


def test_the_console_api_raises_a_runtime_error_with_the_way_to_install(fresh):
    name, is_runtime_error, message = fresh["console_error"]
    assert is_runtime_error and name == "DependencyError"
    assert "nibabel>=5.0" in message and "ensureDependencies(interactive=True)" in message


def test_the_self_test_skips_its_logic_part_without_dependencies(fresh):
    assert any("logic part skipped" in line and "nibabel" in line for line in fresh["self_test_log"])


def test_reload_forgets_the_library_modules(fresh):
    assert fresh["reloads"] == 1 and fresh["library_left"] == []


def test_without_the_pytorch_extension_the_panel_says_to_install_it():
    result = run_module("fresh", "nibabel", "torch", "PyTorchUtils")
    assert result["controller"] is False and "PyTorch extension from the Extensions Manager" in result["view"]["statusLabel"]["text"]
    assert "PyTorch extension" in result["console_error"][2]


def test_with_dependencies_the_controller_is_built_and_the_path_editor_keeps_the_cursor():
    result = run_module("installed")
    assert result["errors"] == [] and result["controller"] is True
    assert result["view"]["installDependenciesButton"]["visible"] is False
    assert result["bundle_path"] == "/models/my bund"
    assert result["path_editor_sets"] == []  # what the user typed is not written back
    assert result["path_editor_after_change"] == "/models/other"
    assert result["history_calls"] == [["addCurrentPathToHistory"]] and result["history_calls_again"] == result["history_calls"]
    assert result["removed_nodes_told"] == ["a CT"]  # the panel tells the controller, which cancels a run on it


REPO = Path(__file__).resolve().parents[1]


def console_snippets() -> list[tuple[str, str]]:
    """The Python console examples of the README and docs/slicer_console.md, by file."""
    import re

    found = []
    for name in ("README.md", "docs/slicer_console.md"):
        text = (REPO / name).read_text(encoding="utf-8")
        found += [(name, code) for code in re.findall(r"```python\n(.*?)```", text, re.S) if "KidneyTumorSegLogic" in code]
    return found


def test_the_console_snippets_run_as_written():
    """Each name a snippet reads is defined above it (or is Slicer's); what it takes from the module
    and the logic exists there."""
    import ast

    module = ast.parse((REPO / "KidneyTumorSeg" / "KidneyTumorSeg.py").read_text(encoding="utf-8"))
    module_names = {target.id for node in module.body if isinstance(node, ast.Assign) for target in node.targets
                    if isinstance(target, ast.Name)} | {node.name for node in module.body if hasattr(node, "name")}
    logic = next(node for node in module.body if isinstance(node, ast.ClassDef) and node.name == "KidneyTumorSegLogic")
    logic_methods = {node.name for node in logic.body if isinstance(node, ast.FunctionDef)} | {
        node.attr for node in ast.walk(logic) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}
    snippets = console_snippets()
    assert {name for name, _ in snippets} == {"README.md", "docs/slicer_console.md"}
    for name, code in snippets:
        defined = {"slicer"}
        for statement in ast.parse(code).body:
            nodes = list(ast.walk(statement))
            used = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            assert used <= defined, f"{name}: {sorted(used - defined)} used before it is defined"
            defined |= {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            defined |= {alias.asname or alias.name for n in nodes if isinstance(n, ast.Import) for alias in n.names}
            for node in nodes:
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    if node.value.id == "KidneyTumorSeg":
                        assert node.attr in module_names, f"{name}: KidneyTumorSeg.{node.attr} does not exist"
                    if node.value.id == "logic":
                        assert node.attr in logic_methods, f"{name}: logic.{node.attr} does not exist"
