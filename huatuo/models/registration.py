"""Registering huatuo's native Baichuan2 classes with transformers' Auto classes, without importing transformers early.

``import huatuo`` must stay light (the unify client, config tooling and most tests never touch a model), yet
``AutoConfig`` / ``AutoModelForCausalLM`` must know ``model_type`` "baichuan" as soon as anyone uses them after
importing huatuo. So importing huatuo only installs an import hook: when an import of transformers' modules has
finished and transformers' Auto config module is loaded, the hook imports ``huatuo.models.baichuan``, which registers
its classes, and removes itself. Waiting for the outermost transformers import to finish matters: transformers' own
modules import the Auto classes half-way through their initialisation, and ``huatuo.models.baichuan`` needs them
complete.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

_AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_NATIVE_MODULE = "huatuo.models.baichuan"


def _initializing(module: object) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def register_if_ready(finishing: str | None = None) -> bool:
    """Import ``huatuo.models.baichuan`` (it registers itself) once transformers is loaded, no import half done."""
    if _AUTO_CONFIG_MODULE not in sys.modules:
        return False
    native = sys.modules.get(_NATIVE_MODULE)
    if native is not None:
        return not _initializing(native)  # registered at the end of its own import
    busy = [
        name
        for name, module in list(sys.modules.items())
        if (name == "transformers" or name.startswith("transformers.")) and name != finishing and _initializing(module)
    ]
    if busy:
        return False
    _uninstall()
    try:
        importlib.import_module(_NATIVE_MODULE)
    except ImportError as err:  # an unsupported transformers must not break every later transformers import
        warnings.warn(f"huatuo could not register its Baichuan2 classes ({err}); needs transformers>=5", stacklevel=2)
    return True


class _Hook(importlib.abc.MetaPathFinder):
    """Wraps the loaders of transformers' modules so each finished import can trigger the registration."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers" and not fullname.startswith("transformers."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            register_if_ready(finishing=fullname)

        loader.exec_module = exec_then_register  # each module gets its own loader instance from the path finders
        return spec


_HOOK = _Hook()


def _uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    """Register now if transformers is already loaded, else when it is (called by ``import huatuo``)."""
    if not register_if_ready() and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
