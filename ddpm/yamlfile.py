"""Reading params.yaml: UTF-8 text, valid YAML, a mapping of sections, and no key set twice.

YAML itself lets a second equal key replace the first without a word (a second `train:` section
dropped the first one's batch_size), so every mapping is checked, at any depth, before it is built.
"""

from pathlib import Path
from typing import Any

import yaml

from ddpm.errors import UserError

MERGE = "tag:yaml.org,2002:merge"  # `<<: *anchor`: its keys may be overridden, that is what it is for


def read_params(path: Path) -> dict[str, Any]:
    """The mapping of sections in the YAML file at `path`; a one-line UserError naming the file (and
    the line, or the key) for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected a YAML file of params") from None
    try:
        raw = _load_unique(text, path)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UserError(f"{path}: invalid YAML{line}: {getattr(e, 'problem', e)}") from None
    if raw is None:  # an empty file is a mistake; no file at all means the defaults
        raise UserError(f"{path}: the file holds no params; expected sections (data, model, ...), or no file for the "
                        "built-in defaults")  # fmt: skip
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    return raw


def _load_unique(text: str, path: Path) -> Any:
    """What yaml.safe_load reads from `text`, once no mapping in it is found to set a key twice."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        twice = _key_set_twice(node, "", set())
        if twice:
            key, first, second = twice
            raise UserError(f"{path}: {key}: set twice, at lines {first} and {second}; the second would silently "
                            "replace the first; keep one")  # fmt: skip
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _key_set_twice(node: yaml.Node, where: str, seen: set[int]) -> tuple[str, int, int] | None:
    """The first key that a mapping at or under `node` sets twice, as (dotted key path, first line,
    second line), or None. `seen`: the nodes already checked (an alias names a node again)."""
    if id(node) in seen:
        return None
    seen.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, Any], int] = {}
        for key, value in node.value:
            name = f"{where}.{key.value}" if where else str(key.value)
            if isinstance(key, yaml.ScalarNode) and key.tag != MERGE:
                line = key.start_mark.line + 1
                if (key.tag, key.value) in lines:
                    return name, lines[key.tag, key.value], line
                lines[key.tag, key.value] = line
            children.append((name, value))
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{where}[{i}]", item) for i, item in enumerate(node.value)]
    for name, child in children:
        if found := _key_set_twice(child, name, seen):
            return found
    return None
