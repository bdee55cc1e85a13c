"""``evaluate.py run=<train run folder>``: that run's export, scored on the suite its experiment names.

Expanded on the command line before Hydra composes anything, so a bad folder is reported at once.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from huatuo.core.errors import ConfigError
from huatuo.core.logs import get_logger

log = get_logger(__name__)


class RunFolderError(ConfigError):
    """``run=DIR`` names something that is not a finished train run folder."""


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand_run(argv: list[str]) -> list[str]:
    """Expand ``run=DIR`` (a train run folder) into ``model_path=DIR/export`` plus the run's ``evaluate_with``.

    ``evaluate_with`` (conf/train.yaml, set by each experiment) is the suite the run is meant to be scored on: the
    paper's experiments name the 2023 pharmacist exam in generate mode. The command line wins: an override of the
    same key is kept and the run's is left out, and choosing another suite (``eval=...``) drops all the run's
    ``eval`` settings. Other arguments pass through unchanged.
    """
    runs = [arg for arg in argv if arg.startswith("run=")]
    if not runs:
        return argv
    if len(runs) > 1 or "," in runs[0]:
        raise RunFolderError(f"{', '.join(runs)}: give one train run folder (loop in the shell for several)")
    folder = Path(runs[0].split("=", 1)[1]).expanduser()
    config_file = folder / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise RunFolderError(
            f"run={folder}: {config_file} not found; give the folder a train run wrote (outputs/train/<time>, or "
            "multirun/train/<time>/<n>), or use model_path=DIR for any other model"
        )
    export = folder / "export"
    if not (export / "config.json").is_file():
        raise RunFolderError(
            f"run={folder}: no export in {export} (the run did not finish, or ran with export.enabled=false); finish "
            f"it with its own overrides plus hydra.run.dir={folder} resume=auto, or pass model_path=DIR"
        )
    suite = OmegaConf.load(config_file).get("evaluate_with") or []
    given = {_override_key(arg) for arg in argv if "=" in arg}
    added = [] if "model_path" in given else [f"model_path={export}"]
    for override in suite:
        key = _override_key(str(override))
        if key in given or ("eval" in given and (key == "eval" or key.startswith("eval."))):
            continue
        added.append(str(override))
    if added:
        log.info("run=%s evaluates with %s", folder, " ".join(added))
    at = argv.index(runs[0]) + 1  # right after run=: Hydra's argument parser wants the overrides in one run
    return [*argv[:at], *added, *argv[at:]]
