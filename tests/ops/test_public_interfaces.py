"""Django, Dramatiq, paramiko and redis-py only through their public interfaces.

A private name (leading underscore) of a library is a debt every upgrade collects: it can
change or vanish in any release, silently.  This fails on any new one in production code:
importing one, reading or assigning one on anything but our own objects, or overriding
one in a subclass of a library class.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("mqi_site", "cases", "gpus", "conductor", "workers", "evaluation")
LIBRARIES = ("django", "dramatiq", "django_dramatiq", "paramiko", "redis")
# needs production secrets to import; it only sets values
NOT_IMPORTED = {"mqi_site.settings_production"}


def production_files() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        if (REPO / package).is_dir()
        for path in (REPO / package).rglob("*.py")
        if "migrations" not in path.parts
    )


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """Private library names this file imports, and private attributes it reaches on
    anything that is not rooted in ``self``, ``cls`` or a name from our own packages.

    A heuristic: a library object kept in a private attribute of ours
    (``self._client._pool``) goes unseen; anything reached through a parameter, a local
    variable or a library module is caught."""
    tree = ast.parse(path.read_text())
    ours: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            names = [alias.asname or alias.name for alias in node.names]
            if root in PACKAGES:
                ours.update(names)
            elif root in LIBRARIES and (
                any(is_private(part) for part in node.module.split("."))
                or any(is_private(alias.name) for alias in node.names)
            ):
                found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in LIBRARIES and any(is_private(part) for part in parts):
                    found.append(f"{path.name}:{node.lineno}: import {alias.name}")
                if parts[0] in PACKAGES:
                    ours.add(alias.asname or parts[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute) and is_private(root.attr):
                root = root.value  # self._owner._error: a chain of our own private attributes
            if isinstance(root, ast.Name) and (root.id in ("self", "cls") or root.id in ours):
                continue
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_no_production_code_reaches_a_private_name_of_a_library():
    problems = [problem for path in production_files() for problem in private_uses(path)]

    assert problems == []


def our_classes():
    for package in PACKAGES:
        if not (REPO / package).is_dir():
            continue
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if ".migrations" in info.name or info.name in NOT_IMPORTED:
                continue
            loaded = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(loaded, inspect.isclass):
                if cls.__module__ == loaded.__name__:
                    yield cls


def private_overrides(cls: type) -> list[str]:
    """A private library base of ``cls``, or a private method of one that ``cls`` redefines."""
    problems = []
    library_bases = [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in LIBRARIES]
    for base in library_bases:
        if is_private(base.__name__):
            problems.append(f"{cls.__module__}.{cls.__name__} subclasses {base.__name__}")
    for name, value in vars(cls).items():
        written_here = getattr(value, "__qualname__", "").startswith(f"{cls.__qualname__}.")
        if is_private(name) and written_here and any(hasattr(b, name) for b in library_bases):
            problems.append(f"{cls.__module__}.{cls.__name__}.{name} overrides a private")
    return problems


def test_no_class_of_ours_overrides_a_private_method_of_a_library_class():
    assert [problem for cls in our_classes() for problem in private_overrides(cls)] == []


def test_the_check_catches_an_override_of_a_private_method():
    from paramiko.buffered_pipe import BufferedPipe

    class Buffer(BufferedPipe):
        def _buffer_frombytes(self, data):
            return data

        def feed(self, data):  # public: fine
            return super().feed(data)

    assert private_overrides(Buffer) == [f"{__name__}.Buffer._buffer_frombytes overrides a private"]


@pytest.mark.parametrize(
    "code, caught",
    [
        ("from dramatiq.brokers.redis import _RedisConsumer\n", True),
        ("def f(sftp):\n    return sftp._request(1)\n", True),
        ("def f(model):\n    return model._meta.db_table\n", True),
        ("from cases import manifest\n\ndef f():\n    return manifest._hashed\n", False),
        ("class A:\n    def f(self):\n        return self._x\n", False),
    ],
)
def test_the_check_catches_what_it_should(tmp_path, code, caught):
    path = tmp_path / "sample.py"
    path.write_text(code)

    assert bool(private_uses(path)) is caught
