"""The one installed import name of this repository: a launcher for its ``models``, ``datasets``, ``engine`` and
``tools``.

Those four names are generic (Hugging Face's ``datasets`` is in most ML environments), so the install does not
make them importable everywhere: it installs only ``hgfpn_keypoints``, which puts the repository's folder first
on ``sys.path`` when asked to (:func:`use_repository`). The console scripts (``hgfpn-train``, ...; see
:mod:`hgfpn_keypoints.cli`) and :func:`load` do that first, so they work from any folder. docs/install.md
explains the design and its one trade-off: a process holds either Hugging Face's ``datasets`` or ours.

This module imports nothing heavy (no torch) and none of the four packages at import time: they only become
importable through :func:`use_repository`.
"""

from __future__ import annotations

import os
import sys

__all__ = ["RepositoryError", "load", "repository_root", "use_repository"]

PACKAGES = ("models", "datasets", "engine", "tools")
_HERE = os.path.dirname(os.path.abspath(__file__))


class RepositoryError(ImportError):
    """Our packages cannot be used in this process: another module of one of their names is already imported,
    or the install is broken. The message is one line that names the fix."""


def repository_root() -> str:
    """The folder holding ``models/``, ``datasets/``, ``engine/`` and ``tools/``.

    A wheel (``pip install .``) carries them under ``hgfpn_keypoints/_repository/``, never as top-level
    packages that would overwrite a namesake in site-packages; an editable install (``pip install -e .``, the
    README's) leaves them in the checkout, the parent of this package's folder.
    """
    bundled = os.path.join(_HERE, "_repository")
    root = bundled if os.path.isdir(bundled) else os.path.dirname(_HERE)
    if not all(os.path.isdir(os.path.join(root, name)) for name in PACKAGES):
        raise RepositoryError(f"{root} does not hold {', '.join(PACKAGES)}: reinstall hgfpn-keypoints "
                              f"(pip install -e <checkout>)")
    return root


def _location(module) -> str:
    """Where an imported module was found (a namespace package has no ``__file__``, only ``__path__``)."""
    if getattr(module, "__file__", None):
        return os.path.dirname(os.path.realpath(module.__file__))
    paths = list(getattr(module, "__path__", []))
    return os.path.realpath(paths[0]) if paths else repr(module)


def use_repository() -> str:
    """Make ``models``, ``datasets``, ``engine`` and ``tools`` import ours in this process; returns the root.

    The root goes first on ``sys.path`` (idempotent: calling again changes nothing). A module of one of those
    names that is already imported from elsewhere (e.g. Hugging Face's ``datasets``) cannot be replaced
    safely, since code that already holds it would keep the other one: that raises
    :class:`RepositoryError` with the fix.
    """
    root = repository_root()
    for name in PACKAGES:
        module = sys.modules.get(name)
        if module is not None and _location(module) != os.path.realpath(os.path.join(root, name)):
            raise RepositoryError(
                f"another {name!r} is already imported in this process (from {_location(module)}), so "
                f"hgfpn_keypoints cannot use its own (from {root}): use hgfpn_keypoints in a separate process "
                f"(e.g. the hgfpn-* commands), or call hgfpn_keypoints.use_repository() before anything imports "
                f"the other {name!r} (which then gets ours); see docs/install.md")
    if not sys.path or sys.path[0] != root:
        sys.path.insert(0, root)
    return root


def load(*args, **kwargs):
    """``engine.api.load`` from any folder: a keypoint model or a detector from a checkpoint or ONNX file.

    Same arguments and result as :func:`engine.api.load` (docs/inference.md); this calls
    :func:`use_repository` first, so it raises :class:`RepositoryError` in a process that already
    imported another ``datasets``.
    """
    use_repository()
    from engine.api import load as api_load

    return api_load(*args, **kwargs)
