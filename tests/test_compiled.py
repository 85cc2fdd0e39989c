"""The compiled hot modules (compiled.py): used only when built from exactly the
sources that are here, whole or not at all; otherwise the pure Python runs.

Each case copies the package to a temporary directory and imports it in a fresh
interpreter, so what it edits and what it imports never touch the tree under test.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import ServerProcess, free_port
from qserver import compiled

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "qserver"

# Prints the loader's decision and where each hot module came from.
REPORT = ("import qserver, importlib; from qserver import compiled; print(compiled.state); "
          "[print(importlib.import_module(n).__file__) for n in compiled.MODULES]")


def copy_package(tmp_path, with_build=True) -> pathlib.Path:
    ignore = shutil.ignore_patterns("__pycache__", *(() if with_build else ("_compiled",)))
    shutil.copytree(PACKAGE, tmp_path / "qserver", ignore=ignore)
    return tmp_path / "qserver"


def report(root: pathlib.Path, **env) -> tuple[str, list]:
    run_env = {k: v for k, v in os.environ.items() if k != "QSERVER_PURE"}
    run_env.update(PYTHONPATH=str(root.parent), **env)
    out = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True,
                         env=run_env, cwd=root.parent, check=True).stdout.splitlines()
    return out[0], out[1:]


def fake_build(package: pathlib.Path, digest: str) -> pathlib.Path:
    """Files where a build of `digest` would put them (never loaded: see below)."""
    directory = package / compiled.DIRECTORY / digest
    directory.mkdir(parents=True)
    for name in compiled.MODULES:
        (directory / compiled.build_file(name)).write_bytes(b"not a shared object")
    return directory


def all_pure(files: list, package: pathlib.Path) -> bool:
    return all(f.endswith(".py") and f.startswith(str(package)) for f in files)


def test_a_plain_checkout_runs_pure_python(tmp_path):
    package = copy_package(tmp_path, with_build=False)
    state, files = report(package)
    assert state == "pure Python: no compiled modules"
    assert all_pure(files, package)


def test_the_digest_covers_every_source_and_declaration(tmp_path):
    package = copy_package(tmp_path, with_build=False)
    before = compiled.digest(str(package))
    assert compiled.digest(str(package)) == before
    for name in ("qserver.wire", "qserver.commands"):
        path = pathlib.Path(compiled.source_path(name, str(package)))
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert compiled.digest(str(package)) != before
        path.write_bytes(original)
        assert compiled.digest(str(package)) == before
    declarations = package / "job.pxd"
    declarations.write_bytes(declarations.read_bytes() + b"\n" if declarations.exists()
                             else b"# new\n")
    assert compiled.digest(str(package)) != before


def test_a_build_of_other_sources_is_never_loaded(tmp_path):
    """An edited .py (or a build for other sources) means pure Python for every hot
    module. The stale files are not shared objects at all: loading one would fail."""
    package = copy_package(tmp_path, with_build=False)
    fake_build(package, compiled.digest(str(package)))
    wire = package / "wire.py"
    wire.write_text(wire.read_text() + "\n# a developer's edit\n")
    state, files = report(package)
    assert state.startswith("pure Python: the compiled modules in ")
    assert all_pure(files, package)


def test_an_incomplete_build_is_never_loaded(tmp_path):
    package = copy_package(tmp_path, with_build=False)
    directory = fake_build(package, compiled.digest(str(package)))
    (directory / compiled.build_file("qserver.engine")).unlink()
    state, files = report(package)
    assert state.startswith("pure Python: the compiled modules in ")
    assert all_pure(files, package)


def test_qserver_pure_forces_pure_python(tmp_path):
    package = copy_package(tmp_path, with_build=False)
    fake_build(package, compiled.digest(str(package)))
    state, files = report(package, QSERVER_PURE="1")
    assert state == "pure Python: QSERVER_PURE is set"
    assert all_pure(files, package)


def _current_build() -> pathlib.Path:
    directory = PACKAGE / compiled.DIRECTORY / compiled.digest()
    if not all((directory / compiled.build_file(n)).exists() for n in compiled.MODULES):
        pytest.skip("no current build here (python setup.py build_ext --inplace)")
    return directory


def test_a_current_build_is_loaded_and_an_edit_turns_it_off(tmp_path):
    _current_build()
    package = copy_package(tmp_path)
    state, files = report(package)
    assert state.startswith("compiled: ")
    assert all(f.startswith(str(package / compiled.DIRECTORY)) and
               f.endswith(compiled.SUFFIX) for f in files), files
    # The developer's edit runs, not the build made before it.
    session = package / "session.py"
    session.write_text(session.read_text() + "\nEDITED = True\n")
    state, files = report(package)
    assert state.startswith("pure Python: ")
    assert all_pure(files, package)
    out = subprocess.run([sys.executable, "-c", "import qserver.session as s; print(s.EDITED)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path))).stdout
    assert out.strip() == "True"


def test_the_server_says_which_modules_run(tmp_path):
    """`qserver -VV` logs the loader's decision; both kinds of server answer alike."""
    for env in ({}, {"QSERVER_PURE": "1"}):
        port = free_port()
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            server = ServerProcess([sys.executable, "-m", "qserver", "-VV", "-l127.0.0.1",
                                    f"-p{port}"], port)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            c = server.client()
            assert c.cmd(b"put 0 0 10 2\r\nhi") == b"INSERTED 1\r\n"
            assert c.cmd(b"reserve") == b"RESERVED 1 2\r\nhi\r\n"
            assert c.cmd(b"delete 1") == b"DELETED\r\n"
        finally:
            server.stop()
        text = server.stderr_text()
        assert "hot modules: " in text
        if env:
            assert "hot modules: pure Python: QSERVER_PURE is set" in text


def _declared_attributes(pxd: pathlib.Path) -> dict:
    """class name -> the attributes its `cdef public` lines declare."""
    classes, current = {}, None
    for line in pxd.read_text().splitlines():
        words = line.split("#")[0].split()
        if line.startswith("cdef class "):
            current = classes.setdefault(words[2].split("(")[0].rstrip(":"), set())
        elif current is not None and words[:2] == ["cdef", "public"]:
            current.update(name.strip(",") for name in " ".join(words[3:]).split(","))
    return {name: {a.strip() for a in attrs if a.strip()} for name, attrs in classes.items()}


def _slots(py: pathlib.Path) -> dict:
    import ast
    found = {}
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.Assign) and item.targets[0].id == "__slots__":
                    found[node.name] = set(ast.literal_eval(item.value))
    return found


def test_the_declarations_match_the_classes_slots():
    """A slot added to a hot class must be declared in its .pxd too (the compile
    would fail and the install fall back to pure Python)."""
    pxds = [p for p in PACKAGE.rglob("*.pxd") if compiled.DIRECTORY not in p.parts]
    assert pxds
    for pxd in pxds:
        slots = _slots(pxd.with_suffix(".py"))
        for name, attributes in _declared_attributes(pxd).items():
            if name in slots:
                assert attributes == slots[name], (pxd.name, name,
                                                   attributes ^ slots[name])


def test_the_connection_is_an_asyncio_protocol():
    """server.py keeps the connection's state in ConnectionCore (an extension type when
    compiled, which cannot derive from a Python class); the class the listeners make
    adds asyncio.Protocol to it and no per-instance dict."""
    import asyncio

    from qserver import server
    assert issubclass(server.Connection, (server.ConnectionCore, asyncio.Protocol))
    assert issubclass(server.Connection, asyncio.Protocol)
    assert server.Connection.__slots__ == ()
    assert "__dict__" not in vars(server.Connection)
