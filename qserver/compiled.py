"""Which build of the hot modules runs: the compiled one, or the pure Python.

`pip install .` compiles the modules in MODULES with Cython when it can (setup.py),
into `_compiled/<digest>/`, where <digest> is a hash of exactly the sources they were
built from (each module's .py and its .pxd of type declarations). At `import qserver`
`install()` hashes the sources that are here; only when a directory of that name holds
every module does a finder load them instead of the .py files. Editing a source
changes the hash, so a developer always runs what they edited; the set is used whole
or not at all, because the compiled modules reach into each other's typed classes.
A compiled module never sits where Python's own import would find it (a separate
directory, dotted file names). No build, another interpreter's build, a stale one or
QSERVER_PURE=1: the pure Python runs. Imports: stdlib only.
"""

import os
import sys
import zlib
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from importlib.util import spec_from_file_location

# The hot path (protocol.md has nothing to say about these: they behave the same
# compiled or not). Packages are named like modules (commands/__init__.py).
MODULES = (
    "qserver.swapset", "qserver.job", "qserver.tube", "qserver.session",
    "qserver.errors", "qserver.wire", "qserver.engine", "qserver.stats",
    "qserver.commands", "qserver.server", "qserver.store.commands",
    "qserver.store.batch", "qserver.store.redis",
)
PACKAGE = os.path.dirname(os.path.abspath(__file__))
DIRECTORY = "_compiled"
SUFFIX = EXTENSION_SUFFIXES[0]      # this interpreter's ABI, e.g. .cpython-311-...so

# What `install()` decided, for `qserver -VV` and the tests.
state = "pure Python: no compiled modules"


def source_path(name: str, package: str = PACKAGE) -> str:
    """The .py file of a module in MODULES (a package's __init__.py)."""
    path = os.path.join(package, *name.split(".")[1:])
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


def digest(package: str = PACKAGE) -> str:
    """A hash of every source the compiled set is made from: CRC-32 and Adler-32 of
    the names, sizes and contents (zlib is loaded at startup anyway; hashlib would
    cost ~20 ms of OpenSSL loading, and this only has to notice an edit)."""
    crc, adler = 0, 1
    for name in MODULES:
        py = source_path(name, package)
        for path in (py, py[:-3] + ".pxd"):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = None
            header = b"%s %d\0" % (os.path.basename(path).encode(),
                                   -1 if data is None else len(data))
            crc = zlib.crc32(data or b"", zlib.crc32(header, crc))
            adler = zlib.adler32(data or b"", zlib.adler32(header, adler))
    return f"{crc:08x}{adler:08x}"


def build_file(name: str) -> str:
    """Where the compiled `name` lives inside a build directory."""
    return name + SUFFIX


class Finder:
    """Loads the modules of one complete, current build in place of their .py files."""

    def __init__(self, directory: str):
        self.directory = directory

    def find_spec(self, name, path=None, target=None):
        if name not in MODULES:
            return None
        file = os.path.join(self.directory, build_file(name))
        py = source_path(name)
        package = [os.path.dirname(py)] if py.endswith("__init__.py") else None
        return spec_from_file_location(name, file, loader=ExtensionFileLoader(name, file),
                                       submodule_search_locations=package)

    def invalidate_caches(self):
        pass


def install(package: str = PACKAGE) -> bool:
    """Use the compiled modules if a build of exactly these sources is here."""
    global state
    root = os.path.join(package, DIRECTORY)
    try:
        builds = os.listdir(root)
    except OSError:
        return False                        # a plain checkout or a pure install
    if os.environ.get("QSERVER_PURE"):
        state = "pure Python: QSERVER_PURE is set"
        return False
    current = digest(package)
    directory = os.path.join(root, current)
    if current not in builds or not all(
            os.path.exists(os.path.join(directory, build_file(name))) for name in MODULES):
        state = (f"pure Python: the compiled modules in {root} were built from other "
                 f"sources than these (or for another Python); rebuild with "
                 f"`pip install .` (-e for a checkout) or "
                 f"`python setup.py build_ext --inplace`")
        return False
    sys.meta_path.insert(0, Finder(directory))
    state = f"compiled: {directory}"
    return True
