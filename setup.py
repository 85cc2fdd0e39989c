"""Build: the pure-Python package, plus its hot modules compiled with Cython when this
machine can (`pip install .` gets Cython from the registry as a build dependency).

The compiled modules go to qserver/_compiled/<digest of their sources>/, where only
qserver/compiled.py looks for them, and only while the sources still hash the same.
Whatever goes wrong while compiling (no Cython, no C compiler, an error) costs the
speed-up, never the install: the same code then runs as plain Python.
QSERVER_PURE_BUILD=1 skips the compile.
"""

import importlib.util
import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiled_module():
    """qserver/compiled.py, loaded on its own (stdlib only; no qserver import)."""
    spec = importlib.util.spec_from_file_location(
        "_qserver_compiled", os.path.join(HERE, "qserver", "compiled.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compiled = _compiled_module()
# The sources as they are now: the build directory is named after them.
BUILD_DIR = os.path.join("qserver", compiled.DIRECTORY,
                         compiled.digest(os.path.join(HERE, "qserver")))
# Plain Python semantics: annotations are documentation (with annotation typing a
# `float` would become a C double and a `list` would refuse a SwapSet); the types
# Cython may rely on are declared in the .pxd files beside the modules.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def say(message: str) -> None:
    print(f"qserver: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compile the hot modules if possible; on any failure install none of them."""

    def run(self):
        if os.environ.get("QSERVER_PURE_BUILD"):
            say("QSERVER_PURE_BUILD is set: pure-Python modules only")
            return
        try:
            from Cython.Build import cythonize
        except ImportError:
            say("Cython is not installed: pure-Python modules only")
            return
        try:
            translated = {ext.name: ext.sources for ext in cythonize(
                self.extensions, compiler_directives=DIRECTIVES, quiet=True,
                build_dir=os.path.join("build", "cython"))}
            for ext in self.extensions:
                ext.sources = translated[ext.name]
            if not self.parallel:
                self.parallel = os.cpu_count() or 1
            # Builds of older sources left in build/ would go into the wheel too.
            built = os.path.join(self.build_lib, "qserver", compiled.DIRECTORY)
            for name in os.listdir(built) if os.path.isdir(built) else ():
                if os.path.join(built, name) != os.path.join(self.build_lib, BUILD_DIR):
                    shutil.rmtree(os.path.join(built, name), ignore_errors=True)
            super().run()
        except Exception as error:      # no compiler, a compile error, ...
            say(f"compiling the hot modules failed ({error}): pure-Python modules only")
            shutil.rmtree(os.path.join(self.build_lib, BUILD_DIR), ignore_errors=True)
            self.extensions = []
            return
        say(f"compiled the hot modules into {BUILD_DIR}")

    def build_extension(self, ext):
        if self.compiler.compiler_type == "unix":
            # No debug information: 11 MB of shared objects become about 3 MB.
            ext.extra_compile_args = ["-g0"]
        super().build_extension(ext)

    def get_ext_fullpath(self, ext_name):
        fullname = self.get_ext_fullname(ext_name)
        if fullname in compiled.MODULES:
            return os.path.join(HERE if self.inplace else self.build_lib,
                                self.get_ext_filename(fullname))
        return super().get_ext_fullpath(ext_name)

    def get_ext_filename(self, fullname):
        if fullname in compiled.MODULES:
            return os.path.join(BUILD_DIR, compiled.build_file(fullname))
        return super().get_ext_filename(fullname)

    def _get_inplace_equivalent(self, build_py, ext):
        # setuptools would put an in-place build next to the .py file (where it
        # would shadow it); ours go to the build directory under the source tree.
        filename = self.get_ext_filename(self.get_ext_fullname(ext.name))
        return os.path.join(HERE, filename), os.path.join(self.build_lib, filename)

    def copy_extensions_to_source(self):
        """--inplace and editable installs: this build replaces older ones."""
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, regular = self._get_inplace_equivalent(build_py, ext)
            os.makedirs(os.path.dirname(inplace), exist_ok=True)
            self.copy_file(regular, inplace, level=self.verbose)
        root = os.path.join(HERE, "qserver", compiled.DIRECTORY)
        for name in os.listdir(root) if self.extensions else ():
            if os.path.join(root, name) != os.path.join(HERE, BUILD_DIR):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


setup(
    ext_modules=[Extension(name, [os.path.relpath(compiled.source_path(
        name, os.path.join(HERE, "qserver")), HERE)]) for name in compiled.MODULES],
    cmdclass={"build_ext": OptionalBuildExt},
)
