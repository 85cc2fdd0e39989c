"""qserver: a work-queue server that speaks the beanstalkd wire protocol."""

__version__ = "0.1.0"

# The compiled hot modules, when `pip install .` could build them from exactly these
# sources; otherwise the pure Python runs (compiled.py).
from qserver import compiled as _compiled   # noqa: E402

_compiled.install()
