"""Files bundled with the package (``huatuo/assets``: the demo data and the tiny tokenizer) and the config folder."""

from __future__ import annotations

from pathlib import Path

from huatuo.core.errors import HuatuoError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ASSETS_DIR = PACKAGE_DIR / "assets"


def asset_path(name: str) -> str:
    """Absolute path of a file or folder bundled under ``huatuo/assets``."""
    path = ASSETS_DIR / name
    if not path.exists():
        raise HuatuoError(f"bundled asset {name!r} not found at {path}; reinstall huatuo or rebuild the asset")
    return str(path)


def conf_dir() -> str:
    """The Hydra config folder: ``conf/`` beside the package in a checkout, ``huatuo/conf`` in a wheel."""
    packaged = PACKAGE_DIR / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(PACKAGE_DIR.parent / "conf")


def register_resolvers() -> None:
    """``${asset:demo/huatuo2_demo.json}`` in YAML resolves to the bundled file, wherever huatuo is installed."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", asset_path)
