"""Imports point one way: video -> layers -> models -> data -> train / extract -> commands."""

from __future__ import annotations

import ast
from pathlib import Path

import spool

ROOT = Path(spool.__file__).parent
# Lower numbers are lower layers; a module may import its own layer and those below.
LAYERS = {
    "spool.errors": 0, "spool.config": 0, "spool.io_utils": 0, "spool.claims": 0,
    "spool.runtime": 0,
    "spool.validation": 0, "spool.cli_args": 0, "spool.distributed": 0, "spool.downloads": 0,
    "spool.tensor_files": 0, "spool.file_names": 0, "spool.processes": 0,
    "spool.video": 1, "spool.layers": 2, "spool.backbones": 2, "spool.models": 3,
    "spool.metrics": 3, "spool.data": 4, "spool.train": 5, "spool.extract": 5,
    "spool.extract_inputs": 5, "spool.extract_outputs": 5,
    "spool.extract_frames": 5, "spool.demo": 6, "spool.commands": 7,
    "spool.cli": 7, "spool.__main__": 7,
}
# The config describes every part, so validating it asks the parts (imports at call time).
ALLOWED = {("spool.config", "spool.layers.attention_backends"),
           ("spool.config", "spool.video.transforms"),
           ("spool.config", "spool.io_utils"), ("spool.config", "spool.layers.pooling")}


def _layer(module: str) -> int | None:
    if module == "spool":  # the package's lazy top-level names reach the models
        return LAYERS["spool.cli"]
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("spool.")}


def test_imports_point_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        module = "spool." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        own = _layer(module)
        assert own is not None, f"{module}: not placed in a layer (add it to LAYERS)"
        for name in _imports(path):
            other = _layer(name)
            if other is not None and other > own and (module, name) not in ALLOWED:
                wrong.append(f"{module} (layer {own}) imports {name} (layer {other})")
    assert not wrong, "\n".join(wrong)


def test_no_file_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
