"""The layers of docs/architecture.md, checked on the imports (parsed with ast).

watch → pipeline → steps (pure) → store / products: a module never imports one of a
layer above it. Imports inside functions count too (a lazy import is still a
dependency).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reduxd"
# layer (a folder of reduxd) -> reduxd modules it must never import (prefixes)
FORBIDDEN = {
    "steps": ("reduxd.store", "reduxd.products", "reduxd.reduce", "reduxd.pipeline"),
    "products": ("reduxd.reduce", "reduxd.pipeline"),
}
# watch/ knows only paths: its own helpers and the low-level modules
WATCH_ALLOWED = ("reduxd.watch", "reduxd.log", "reduxd.errors", "reduxd.files",
                 "reduxd.fsinfo", "reduxd.config")  # fmt: skip


def module_name(path, package):
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported(path, root):
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).rsplit(".", 1)[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base]) if base else ".".join(up)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def violations(layer, root=PACKAGE):
    """``"<file> imports <module>"`` for each import of ``root/layer`` breaking the rule."""
    out = []
    for path in sorted((root / layer).rglob("*.py")):
        for name in imported(path, root):
            if layer == "watch":
                bad = (
                    is_under(name, "reduxd")
                    and name != "reduxd"
                    and not any(is_under(name, ok) for ok in WATCH_ALLOWED)
                )
            else:
                bad = any(is_under(name, p) for p in FORBIDDEN[layer])
            if bad:
                out.append(f"{path.relative_to(root.parent).as_posix()} imports {name}")
    return sorted(set(out))


@pytest.mark.parametrize("layer", ["steps", "products", "watch"])
def test_no_import_points_up_a_layer(layer):
    assert violations(layer) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """An import inside a function, a relative import and watch/'s own rule are seen."""
    root = tmp_path / "reduxd"
    (root / "products").mkdir(parents=True)
    (root / "watch").mkdir()
    (root / "products" / "a.py").write_text("def f():\n    from reduxd.reduce import x\n")
    (root / "products" / "b.py").write_text("from ..pipeline import Pipeline\n")
    (root / "watch" / "c.py").write_text("from reduxd import log\nfrom reduxd.frames import y\n")
    assert violations("products", root) == [
        "reduxd/products/a.py imports reduxd.reduce",
        "reduxd/products/a.py imports reduxd.reduce.x",
        "reduxd/products/b.py imports reduxd.pipeline",
        "reduxd/products/b.py imports reduxd.pipeline.Pipeline",
    ]
    assert violations("watch", root) == [
        "reduxd/watch/c.py imports reduxd.frames",
        "reduxd/watch/c.py imports reduxd.frames.y",
    ]
