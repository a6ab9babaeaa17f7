"""The layer line in docs/ARCHITECTURE.md is what the imports do: every import between two
packages of softprompt points down the line, never up or sideways, and every package is on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layer_line(doc: Path) -> list[set[str]]:
    """The packages of each layer, top first, from the doc's line that starts with `cli →`."""
    line = next(t for t in doc.read_text().splitlines() if t.startswith("cli →"))
    return [{name.strip() for name in layer.split("/")} for layer in line.split("→")]


def package_imports(src: Path) -> set[tuple[str, str, str]]:
    """(importing package, imported package, importing module) for every import between two
    packages below `src/softprompt`, lazy imports inside functions included."""
    found = set()
    for path in (src / "softprompt").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        module = ".".join(parts).removesuffix(".__init__")
        if len(parts) < 2 or parts[1] == "__init__":
            continue  # the top-level facade
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                target = name.split(".")
                if target[0] == "softprompt" and len(target) > 1 and target[1] != parts[1]:
                    found.add((parts[1], target[1], module))
    return found


def violations(src: Path, layers: list[set[str]]) -> list[str]:
    """Imports that do not point strictly down the layers, and packages not on the line."""
    level = {name: i for i, layer in enumerate(layers) for name in layer}
    packages = {p.stem for p in (src / "softprompt").iterdir() if not p.name.startswith("_")}
    wrong = [f"{name} is not on the layer line" for name in sorted(packages - set(level))]
    for source, target, module in sorted(package_imports(src)):
        if source in level and target in level and level[target] <= level[source]:
            wrong.append(f"{module} imports softprompt.{target}, which is not below {source}")
    return wrong


def test_the_imports_follow_the_documented_layer_line():
    layers = layer_line(ROOT / "docs/ARCHITECTURE.md")
    assert violations(ROOT / "src", layers) == []


def test_an_upward_or_sideways_import_is_reported(tmp_path):
    package = tmp_path / "softprompt"
    for name, body in {
        "low/__init__.py": "from softprompt.high import x\n",
        "high/__init__.py": "def f():\n    from softprompt.peer import y\n",
        "peer.py": "",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(body)
    layers = [{"high", "peer"}, {"low"}]
    assert violations(tmp_path, layers) == [
        "softprompt.high imports softprompt.peer, which is not below high",
        "softprompt.low imports softprompt.high, which is not below low",
    ]
    assert violations(tmp_path, [{"high"}, {"low"}])[0] == "peer is not on the layer line"
