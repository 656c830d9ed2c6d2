"""ddpm.layout owns the run folder and every artifact's name: no other module of ddpm spells one out."""

import ast
from pathlib import Path

import pytest

from ddpm import layout

PACKAGE = Path(layout.__file__).parent
# Every file name layout defines, and the folders it defines (runs, data/prepared, ...)
FILES = {value for key, value in vars(layout).items() if key.isupper() and isinstance(value, str) and "." in value}
FOLDERS = {value.as_posix() for value in vars(layout).values() if isinstance(value, Path)}


def code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module's code, docstrings left out (they may name files in prose)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def spelled(text: str) -> set[str]:
    """The artifact names `text` holds: a file name, whole or as a word or path part, or a folder path."""
    words = {w.strip("`'\"()[],;:") for w in text.replace("/", " ").split()}
    return (FILES & words) | {folder for folder in FOLDERS if text.startswith(folder)}


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "layout.py"))
def test_no_module_but_layout_spells_an_artifact_name(module: str) -> None:
    found = [(line, text) for line, text in code_strings(PACKAGE / module) if spelled(text)]
    assert not found, f"ddpm/{module} spells artifact names that belong in ddpm.layout: {found}"


def test_the_check_sees_a_name_in_code_and_not_in_a_docstring(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('"""Writes eval.json."""\n\ndef f():\n    """model.pt"""\n    return "runs/x/eval.json"\n')
    assert [text for _, text in code_strings(source) if spelled(text)] == ["runs/x/eval.json"]
    assert spelled("samples.npy") == {"samples.npy"} and spelled("data/prepared/x.npy") == {"data/prepared"}
    assert not spelled("an evaluation") and not spelled("samples")  # an MLflow artifact folder, say


def test_the_run_folder_holds_each_stage_s_files_under_its_schedule_and_seed() -> None:
    folder = layout.RunFolder.of("cosine", 2)
    assert folder.path == Path("runs/cosine/seed2")
    assert folder.model == Path("runs/cosine/seed2/model.pt")
    assert folder.samples_array == Path("runs/cosine/seed2/samples/samples.npy")
    assert folder.grid.parent == folder.samples and folder.eval_metrics.parent == folder.path
    assert layout.checkpoint_path(folder.checkpoints, 5000).name == "step-00005000.pt"


def test_step_checkpoints_are_listed_oldest_first_and_strangers_are_left_out(tmp_path: Path) -> None:
    for step in (500, 20, 3000):
        layout.checkpoint_path(tmp_path, step).touch()
    (tmp_path / "step-notanumber.pt").touch()
    (tmp_path / "step-00000007.pt.tmp").touch()
    assert [p.name for p in layout.step_checkpoints(tmp_path)] == [
        "step-00000020.pt", "step-00000500.pt", "step-00003000.pt"
    ]  # fmt: skip
    assert layout.step_checkpoints(tmp_path / "absent") == []
