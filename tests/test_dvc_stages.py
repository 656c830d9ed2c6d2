"""dvc.yaml against the code: every stage depends on exactly the modules its command runs, found
by reading the imports (those of the command's function in ddpm/cli.py and the helpers it calls,
then every ddpm import of those modules, transitively)."""

import ast
import difflib
import re
from pathlib import Path

import pytest
import yaml

from ddpm.config import Config

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "ddpm" / "cli.py"


def ddpm_imports(node: ast.AST) -> set[str]:
    """The ddpm modules imported anywhere inside `node`, as file names (ddpm/x.py)."""
    found = set()
    for item in ast.walk(node):
        if isinstance(item, ast.ImportFrom) and item.module and item.module.startswith("ddpm."):
            found.add(item.module)
        elif isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names if alias.name.startswith("ddpm.")}
    return {f"ddpm/{name.split('.')[1]}.py" for name in found}


def module_closure(start: set[str]) -> set[str]:
    """`start` and every ddpm module imported (at any depth, in any function) by them."""
    seen, todo = set(), set(start)
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= ddpm_imports(ast.parse((ROOT / module).read_text())) - seen
    return seen


def command_modules(command: str) -> set[str]:
    """The modules `ddpm <command>` runs: cli.py, what its function imports, and what the cli helpers
    it calls import, then their closure."""
    tree = ast.parse(CLI.read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    module_level = {n for n in tree.body if isinstance(n, ast.ImportFrom | ast.Import)}
    start = set().union(*(ddpm_imports(n) for n in module_level))
    todo, seen = [functions[command]], set()
    while todo:
        function = todo.pop()
        seen.add(function.name)
        start |= ddpm_imports(function)
        called = {c.func.id for c in ast.walk(function) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
        todo += [functions[name] for name in called if name in functions and name not in seen]
    return module_closure(start - {"ddpm/cli.py"}) | {"ddpm/cli.py"}  # cli.py's other commands are not run


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(stages()))
def test_each_stage_depends_on_exactly_the_modules_its_command_runs(stage: str) -> None:
    definition = stages()[stage]
    definition = definition.get("do", definition)  # foreach stages
    command = definition["cmd"].split()[1]
    listed = {dep for dep in definition["deps"] if isinstance(dep, str) and dep.startswith("ddpm/")}
    assert listed == command_modules(command), f"{stage}: missing {command_modules(command) - listed}, " \
        f"not run {listed - command_modules(command)}"  # fmt: skip


def test_the_import_reader_sees_function_level_imports() -> None:
    # train imports ddpm.tracking only inside a helper, and data.py through train: both must be found
    modules = command_modules("train")
    assert {"ddpm/tracking.py", "ddpm/data.py", "ddpm/train.py", "ddpm/unet.py"} <= modules
    assert "ddpm/evaluate.py" not in modules


def test_the_offline_preset_changes_only_the_params_it_sets(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml through its own YAML writer; params.yaml is written in
    that style, so the preset's diff is its values and nothing else: the lines of the keys it sets
    (a list's items included) and no other line."""
    from dvc.utils.hydra import apply_overrides

    script = [line for line in (ROOT / "pipeline" / "offline.sh").read_text().splitlines() if not line.startswith("#")]
    overrides = [o.strip("'") for o in re.findall(r"-S ('[^']+'|\S+=\S+)", "\n".join(script))]
    assert len(overrides) > 10
    copy = tmp_path / "params.yaml"
    copy.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(copy), overrides)
    before, after = (ROOT / "params.yaml").read_text(), copy.read_text()
    expected = yaml.safe_load(before)
    for key, value in (o.split("=", 1) for o in overrides):
        section, name = key.split(".")
        expected[section][name] = yaml.safe_load(value)
    assert Config.model_validate(yaml.safe_load(after)) == Config.model_validate(expected)  # "1e-3" is 0.001
    names = {key.split("=")[0].split(".")[-1] for key in overrides}
    changed = [line[2:].strip() for line in difflib.ndiff(before.splitlines(), after.splitlines())
               if line.startswith(("- ", "+ "))]  # fmt: skip
    assert all(line.split(":")[0] in names or line.startswith("- ") for line in changed), changed
    assert {line.split(":")[0] for line in changed if not line.startswith("- ")} == names


def test_the_preset_drops_dvcs_warnings_about_outputs_not_made_yet_and_passes_the_rest_as_it_comes() -> None:
    import subprocess
    import sys

    script = ROOT / "pipeline" / "quiet_dvc.py"
    assert "quiet_dvc.py" in (ROOT / "pipeline" / "offline.sh").read_text()
    noise = "".join(f"WARNING: No file hash info found for '/r/{name}'. It won't be created.\n" for name in "abc")
    given = f"{noise}Running stage 'train@cosine':\nWARNING: something else\n\rtrain 10%\rtrain 20%\nWARNING: No"
    done = subprocess.run([sys.executable, script], input=given.encode(), capture_output=True, timeout=30)
    assert (
        done.stderr.decode()
        == "Running stage 'train@cosine':\nWARNING: something else\n\rtrain 10%\rtrain 20%\nWARNING: No"
    )
    # a progress bar's update shows before its line ends
    with subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdin.write(b"\rtrain  5%")
        process.stdin.flush()
        assert process.stderr.read(len(b"\rtrain  5%")) == b"\rtrain  5%"
        process.stdin.close()
