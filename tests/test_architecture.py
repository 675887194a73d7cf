"""The layering the design promises, checked on the source: imports go one way, no module imports another
package's private names, and README's layout table has one line for every module."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(top: str) -> dict[str, ast.Module]:
    """{dotted module name: parsed source} of every .py file under package `top`."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                with open(path, encoding="utf-8") as fh:
                    out[name] = ast.parse(fh.read(), path)
    return out


def imports(name: str, tree: ast.Module):
    """(imported module, imported names) of every import in a module, relative ones resolved."""
    package = name if tree_is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield base, [a.name for a in node.names]


def tree_is_package(name: str) -> bool:
    return os.path.isfile(os.path.join(ROOT, *name.split("."), "__init__.py"))


ALL = {**modules("hybrid"), **modules("distill")}


def test_hybrid_never_imports_distill():
    bad = [(m, mod) for m, t in ALL.items() if m.startswith("hybrid") for mod, _ in imports(m, t)
           if mod == "distill" or mod.startswith("distill.")]
    assert not bad, bad


def test_ops_import_nothing_above_them():
    bad = [(m, mod) for m, t in ALL.items() if m.startswith("hybrid.ops") for mod, _ in imports(m, t)
           if mod.startswith(("hybrid", "distill")) and not mod.startswith("hybrid.ops")]
    assert not bad, bad


def test_no_private_name_crosses_a_package():
    """`from hybrid.x import _name` in distill (or across subpackages) reaches into another package's insides."""
    def package(mod: str) -> str:
        return mod if tree_is_package(mod) else mod.rpartition(".")[0]

    bad = []
    for m, t in ALL.items():
        for mod, names in imports(m, t):
            if mod.startswith(("hybrid", "distill")) and package(mod) != package(m):
                bad += [f"{m}: from {mod} import {n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_readme_layout_lists_every_module():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = readme[readme.index("## Layout"):]
    listed = set(re.findall(r"^\| `([^`]+)`", table, flags=re.M))
    missing = [m for m in ALL if not m.endswith("__init__") and tree_is_package(m) is False
               and m.replace(".", "/") + ".py" not in listed]
    assert not missing, f"modules without a line in README's layout table: {missing}"
    stale = [p for p in listed if p.endswith(".py") and not os.path.isfile(os.path.join(ROOT, p))]
    assert not stale, f"README's layout table names files that do not exist: {stale}"
