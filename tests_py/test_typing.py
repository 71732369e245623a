"""The package's typing: stubs for _core kept in sync with the module, py.typed."""

from __future__ import annotations

import ast
import inspect
import pathlib

import cpcsync
from cpcsync import _core

PACKAGE = pathlib.Path(cpcsync.__file__).parent


def _stub_names() -> dict[str, set[str]]:
    tree = ast.parse((PACKAGE / "_core.pyi").read_text())
    names: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[""].add(node.name)
            names[node.name] = {
                n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
        elif isinstance(node, ast.FunctionDef):
            names[""].add(node.name)
    return names


def _runtime_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {"": set()}
    for name, obj in vars(_core).items():
        if name.startswith("__"):
            continue
        if inspect.isclass(obj):
            names[""].add(name)
            names[name] = {
                n
                for n in vars(obj)
                if not n.startswith("_")
                or n in {"__len__", "__enter__", "__exit__", "__init__", "__repr__"}
            }
        elif callable(obj):
            names[""].add(name)
    return names


def test_stub_lists_exactly_the_module_surface() -> None:
    stub, runtime = _stub_names(), _runtime_names()
    assert stub[""] == runtime[""]
    for cls, members in runtime.items():
        if cls:
            assert members - {"__init__"} <= stub[cls], f"{cls}: {members - stub[cls]} missing"


def test_package_is_marked_typed() -> None:
    assert (PACKAGE / "py.typed").exists()


def test_every_public_name_has_a_docstring() -> None:
    for name in cpcsync.__all__:
        obj = getattr(cpcsync, name)
        if callable(obj) or inspect.isclass(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def _public_members(obj: object) -> list[tuple[str, object]]:
    return [
        (n, m)
        for n, m in vars(obj).items()
        if not n.startswith("_") and (inspect.isfunction(m) or isinstance(m, property))
    ]


def test_every_public_name_of_the_toolkit_store_cli_and_metrics_has_a_docstring() -> None:
    import cpcsync.cli
    import cpcsync.demo
    import cpcsync.metrics
    import cpcsync.store
    import cpcsync.testing
    import cpcsync.testing.plugin
    import cpcsync.testing.postgres

    modules = [cpcsync.testing, cpcsync.testing.postgres, cpcsync.store, cpcsync.metrics]
    modules += [cpcsync.cli, cpcsync.demo]
    missing = []
    for module in modules:
        assert (module.__doc__ or "").strip(), f"{module.__name__} has no docstring"
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (callable(obj) or inspect.isclass(obj)):
                continue
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj) and obj.__module__.startswith("cpcsync"):
                for member, m in _public_members(obj):
                    doc = m.__doc__ if not isinstance(m, property) else m.fget.__doc__  # type: ignore[union-attr]
                    if not (doc or "").strip():
                        missing.append(f"{module.__name__}.{name}.{member}")
    fixtures = [
        f
        for n, f in vars(cpcsync.testing.plugin).items()
        if hasattr(f, "_fixture_function_marker") or type(f).__name__ == "FixtureFunctionDefinition"
    ]
    assert len(fixtures) >= 7
    for f in fixtures:
        assert "Scope:" in (f.__doc__ or ""), f"fixture {f} lacks its scope/type/default doc"
    assert missing == []
