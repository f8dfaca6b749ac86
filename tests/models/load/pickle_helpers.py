"""Crafted pickles for the loader tests: payloads that would leave a marker file if they ever ran,
and fake stylegan2-ada network pickles built from hand-written persistent-object records.

One copy for every test that needs them (test_nvidia_pickle.py, test_stylegan2_loading.py). Each
payload writes a marker under the test's tmp_path, so a test proves that nothing ran by checking
that the marker does not exist.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import types
from pathlib import Path


def marker_command(marker: Path) -> str:
    """A shell command that creates `marker` (for os.system-style payloads)."""
    return f"touch '{marker}'"


def marker_python(marker: Path) -> str:
    """Python source that creates `marker` (for eval/exec payloads and embedded module sources)."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


class RunsCommand:
    """Pickles as `os.system(cmd)`: unpickling it with plain pickle runs the command."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


PERSISTENCE_MODULE = "torch_utils.persistence"


def persistent_meta(class_name: str, attrs: dict | None = None, module_src: str = "",
                    children: dict | None = None) -> dict:
    """The description stylegan2-ada's persistence pickles for one network object.

    `attrs` are plain attributes of the module (c_dim, w_dim, ...); `children` maps sub-module names
    to nested `persistent_meta` dicts. Tensors are left out: the tests using this need none.
    """
    state = {"_parameters": {}, "_buffers": {}, "_modules": {}, **(attrs or {})}
    meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name, "state": state}
    for name, child in (children or {}).items():
        state["_modules"][name] = _Persistent(child)
    return meta


class _Persistent:
    """Pickles as `torch_utils.persistence._reconstruct_persistent_obj(meta)`, like ada's objects."""

    def __init__(self, meta: dict):
        self.meta = meta

    def __reduce__(self):
        return sys.modules[PERSISTENCE_MODULE]._reconstruct_persistent_obj, (self.meta,)


@contextlib.contextmanager
def _stand_in_persistence_module():
    """Lets pickle.dumps name `torch_utils.persistence._reconstruct_persistent_obj`; it runs nothing.

    The stand-in modules exist only while pickling, so the reader under test cannot find them.
    """
    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called: the pickle is only written here")

    _reconstruct_persistent_obj.__module__ = PERSISTENCE_MODULE
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence = types.ModuleType(PERSISTENCE_MODULE)
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    saved = {name: sys.modules.get(name) for name in ("torch_utils", PERSISTENCE_MODULE)}
    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules[PERSISTENCE_MODULE] = persistence
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_network_pickle(path: Path, networks: dict[str, dict | None], protocol: int = 4) -> Path:
    """Write a stylegan2-ada-style network pickle: {name: persistent object from `persistent_meta`}."""
    with _stand_in_persistence_module():
        data = pickle.dumps({k: None if v is None else _Persistent(v) for k, v in networks.items()},
                            protocol=protocol)
    path.write_bytes(data)
    return path
