"""huatuo: one-stage medical adaptation of LLMs (the HuatuoGPT-II method) with Hydra and Lightning.

The package is laid out by pipeline stage (docs/architecture.md): ``core`` at the bottom, ``models`` above it, the
stages ``data``, ``unify``, ``inference``, ``training`` and ``evaluation`` above those, and the commands
(``huatuo.data.prepare``, ``huatuo.train``, ...) on top. Importing ``huatuo`` stays light: no torch, no transformers.
"""

from huatuo.core.assets import ASSETS_DIR, asset_path, conf_dir, register_resolvers

__version__ = "0.1.0"
__all__ = ["ASSETS_DIR", "__version__", "asset_path", "conf_dir"]

register_resolvers()

# `model_type: baichuan` resolves to huatuo's native classes in AutoConfig/AutoModelForCausalLM once transformers
# loads; the hook keeps `import huatuo` itself free of torch and transformers.
from huatuo.models import registration  # noqa: E402

registration.install()
