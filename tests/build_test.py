"""BUILD declares every package module and test file, and nothing that does not exist.

Bazel cannot fetch its rules on the development machines, so this test reads
BUILD as Starlark with Python's `ast` instead of running Bazel.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _rules():
    tree = ast.parse((ROOT / "BUILD").read_text(), "BUILD")
    rules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            kwargs = {k.arg: k.value for k in node.keywords}
            if "srcs" in kwargs:
                srcs = [e.value for e in kwargs["srcs"].elts]
                deps = [e.value for e in kwargs["deps"].elts] if "deps" in kwargs else []
                rules.append((node.func.id, kwargs["name"].value, srcs, deps))
    return rules


def test_every_module_is_a_py_library():
    declared = {s for kind, _, srcs, _ in _rules() if kind == "py_library" for s in srcs}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tfmetanas").rglob("*.py")}
    assert modules - declared == set(), "modules missing from BUILD (python tools/update_build.py)"


def test_every_test_file_is_a_py_test():
    declared = {s for kind, _, srcs, _ in _rules() if kind == "py_test" for s in srcs}
    tests = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("*.py")
        if p.name.endswith("_test.py") or p.name.startswith("test_")
    }
    assert tests - declared == set(), "tests missing from BUILD (python tools/update_build.py)"


def test_declared_files_exist_and_labels_resolve():
    rules = _rules()
    names = {name for _, name, _, _ in rules}
    for kind, name, srcs, deps in rules:
        for src in srcs:
            assert (ROOT / src).exists(), f"{kind} {name}: {src} does not exist"
        for dep in deps:
            if dep.startswith(":"):
                assert dep[1:] in names, f"{kind} {name}: unknown dependency {dep}"
            else:
                assert dep.startswith("@pypi//"), f"{kind} {name}: third-party dep {dep}"
    assert {"tfmetanas-train", "tfmetanas-evaluate"} <= names
