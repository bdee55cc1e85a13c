"""Experiment tracking: a W&B logger that goes online with credentials and offline without, never prompting."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Literal


def wandb_credentials_present() -> bool:
    """True when W&B can authenticate without asking: WANDB_API_KEY or a netrc entry for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    mode: Literal["auto", "online", "offline"] = "auto",
    tags: list[str] | None = None,
):
    """Lightning's WandbLogger in ``online`` mode when credentials exist, else ``offline`` (``mode=auto``)."""
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline"):
        raise ValueError(f"logger.wandb.mode={mode!r}: use auto, online or offline")
    offline = mode == "offline" or (mode == "auto" and not wandb_credentials_present())
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=name or Path(save_dir).name,
        save_dir=save_dir,
        offline=offline,
        tags=list(tags or []),
    )
