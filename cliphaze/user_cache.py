"""Where cliphaze keeps files it writes for itself (caches): the user's cache directory, never the package.

An installed package directory is not ours to write: a cache left in ``site-packages/cliphaze/`` survives
``pip uninstall`` (and the switch to ``pip install -e .``) as an empty ``cliphaze`` directory, which Python
then imports as a namespace package from any other working directory. The caches go under
``platformdirs.user_cache_dir("cliphaze")`` instead (``$XDG_CACHE_HOME/cliphaze`` or ``~/.cache/cliphaze`` on
Linux).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import platformdirs

APP_NAME = "cliphaze"
# numba reads its cache location from this variable; a user's own setting always wins.
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def user_cache_dir(kind: str) -> Path:
    """The directory for one kind of cache (e.g. ``"numba"``); not created here."""
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / kind


def import_numba() -> ModuleType:
    """Import numba with its on-disk kernel cache in the user cache directory; the one way cliphaze loads it.

    numba writes ``cache=True`` kernels next to the module's source (an installed package's
    ``__pycache__``) unless ``NUMBA_CACHE_DIR`` names a directory. numba reads that variable when it is
    imported (and again before each compilation), and decides where a kernel's cache goes when the kernel
    is decorated, so it is set here, just before the first import, and not at cliphaze's import: only
    the code that uses numba pays for it, and a process that never runs a numba kernel is left alone.

    Raises:
        ImportError: numba is not installed (callers fall back or report it).
    """
    if not os.environ.get(NUMBA_CACHE_ENV):
        os.environ[NUMBA_CACHE_ENV] = str(user_cache_dir("numba"))
    import numba
    from numba.core import config

    config.reload_config()  # no-op unless numba was imported before the variable was set (e.g. by the user)
    return numba
