"""The module boundaries of the design, held by reading each module's imports."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "qserver"

# module -> the qserver modules it may import (stdlib is always allowed, except the
# names in FORBIDDEN_STDLIB for the pure modules).
ALLOWED = {
    "errors": set(),
    "config": set(),
    "logs": set(),
    "systemd": set(),
    "swapset": set(),
    "job": set(),
    "wire": {"errors"},
    "tube": {"job", "swapset"},
    "session": {"job", "swapset"},
    "policy": {"errors", "wire"},
    "ledger": {"listing"},
    "listing": {"errors", "job", "flush"},
    "flush": {"job", "errors"},
    "events": set(),
    "compiled": set(),
    "lifecycle": {"errors", "job", "policy", "ledger"},
    "steering": {"errors", "job", "flush"},
    "engine": {"errors", "job", "tube", "session", "swapset", "lifecycle", "steering",
               "flush"},
    "stats": {"job", "wire"},
    "commands": {"commands", "wire", "engine", "errors", "stats", "policy", "steering",
                 "listing"},
    "journal": {"journal", "job", "errors", "ledger", "lifecycle", "policy", "steering"},
    # The dashboard drives the queue through an in-process client (a connection
    # the server makes for it; in store mode with a store session).
    "http": {"http", "store", "wire", "errors", "stats"},
    "store": {"store", "errors", "wire", "commands", "stats", "policy", "listing",
              "events"},
}
# The engine and what it is made of never touch the event loop, sockets or bytes on
# the wire: they are pure and tested with an injected clock.
PURE = {"swapset", "job", "tube", "session", "engine", "policy", "ledger", "lifecycle",
        "steering", "listing", "events", "flush"}
FORBIDDEN_STDLIB = {"asyncio", "socket", "selectors", "uvloop"}


def _imports(path: pathlib.Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "qserver":
                names.update(f"qserver.{alias.name}" for alias in node.names)
    return names


def _files(module: str):
    path = PACKAGE / module
    return sorted(path.glob("*.py")) if path.is_dir() else [PACKAGE / f"{module}.py"]


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_stay_inside_its_boundary(module):
    for path in _files(module):
        imported = _imports(path)
        ours = {name.split(".")[1] for name in imported
                if name.startswith("qserver.") and name.count(".") >= 1}
        assert ours <= ALLOWED[module], (path.name, ours - ALLOWED[module])
        if module in PURE:
            assert not imported & FORBIDDEN_STDLIB, (path.name, imported & FORBIDDEN_STDLIB)


def test_every_module_has_a_docstring():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(PACKAGE)} has no docstring"


def test_starting_the_server_imports_no_optional_package():
    """redis-py (about 100 ms to import) and sortedcontainers load only when a store
    or a listing asks for them, so startup stays fast."""
    code = ("import sys, qserver.cli, qserver.server, qserver.commands; "
            "print(sorted(m for m in ('redis', 'hiredis', 'sortedcontainers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
