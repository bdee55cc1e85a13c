"""huatuo: one-stage medical adaptation of LLMs (the HuatuoGPT-II method) with Hydra and Lightning."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

ASSETS_DIR = Path(__file__).parent / "assets"


def asset_path(name: str) -> str:
    """Absolute path of a file or folder bundled under ``huatuo/assets``."""
    path = ASSETS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"bundled asset {name!r} not found at {path}; reinstall huatuo or rebuild the asset")
    return str(path)


def conf_dir() -> str:
    """The Hydra config folder: ``conf/`` beside the package in a checkout, ``huatuo/conf`` in a wheel."""
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).parent.parent / "conf")


# `${asset:demo/huatuo2_demo.json}` in YAML resolves to the bundled file, wherever huatuo is installed.
if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset_path)

# `model_type: baichuan` resolves to huatuo's native classes in AutoConfig/AutoModelForCausalLM once transformers
# loads; the hook keeps `import huatuo` itself free of torch and transformers.
from huatuo import registration  # noqa: E402

registration.install()
