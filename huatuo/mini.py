"""The whole HuatuoGPT-II method in miniature, on CPU in minutes, every artifact in one run folder.

    make mini                                              # = python -m huatuo.mini
    python -m huatuo.mini --out outputs/mini-1 trainer.max_steps=80    # extra arguments: train.py overrides

The stages are the real ones, called as the entry points call them, with small budgets:

1. an untrained tiny model (the demo backbone at its seeded initialisation) is exported and served by
   ``transformers serve`` on 127.0.0.1: the "LLM endpoint" of the unify stage and the judge;
2. unify turns the bundled corpus passages into (question, answer) pairs through that endpoint;
3. train prepares those pairs with the demo SFT dialogues under priorities (conf/data/mini.yaml) and trains the tiny
   backbone (conf/experiment/mini.yaml), then exports it;
4. evaluate scores the export on the demo exam in log-likelihood and in generation mode;
5. judge compares the trained model's answers with the untrained model's, both orders, through the endpoint;
6. chat answers one message with the trained model.

A tiny model writes gibberish: the unify pairs, the exam replies and the judge's verdicts are noise (the judge's
unreadable verdicts are reported as parse failures, never guessed). The run shows the plumbing and where every
artifact lands; docs/reproduce.md is the same path at paper scale.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import huatuo
from huatuo import conf_dir
from huatuo.core.logs import get_logger

log = get_logger(__name__)

CHAT_MESSAGE = "最近总是失眠，晚上很难入睡，有什么办法吗？"

# Small budgets that keep each stage to seconds on 2 CPU cores (the stage configs' other defaults apply).
UNIFY = [
    "question.min_chinese_share=0",  # a random model's questions are not Chinese: let them through to training
    "question.params.max_tokens=48",
    "answer.params.max_tokens=96",
    "endpoint.max_concurrency=4",
    "endpoint.timeout=120",
]
EVALUATE = ["eval=demo", "progress=false", "eval.generate.max_new_tokens=32"]
JUDGE = [
    "eval=judge_inst",
    "progress=false",
    "eval.limit=6",
    "eval.model_a.name=trained",
    "eval.model_b.name=untrained",
    "eval.generation.max_new_tokens=32",
    "eval.judge.params.max_tokens=32",
    "eval.judge.max_concurrency=4",
    "eval.parse_retries=0",
]


def compose_stage(config_name: str, overrides: list[str], save_to: Path | None = None) -> DictConfig:
    """Compose an entry point's config as its command line would; ``save_to``: keep a resolved copy there.

    train and evaluate write their own resolved_config.yaml; unify, run outside Hydra here, gets one this way.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if save_to is not None:  # the stage's config as it ran (keys come from the environment, never from configs)
        save_to.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, save_to / "config.yaml", resolve=True)
    return cfg


def export_untrained(out: Path, cache: Path, train_overrides: list[str]) -> Path:
    """Export the tiny backbone exactly as training initialises it (same config, same seed)."""
    import lightning as L
    from hydra.utils import instantiate

    from huatuo.training.export import export_model

    cfg = compose_stage(
        "train",
        [
            "experiment=mini",
            f"paths.run_dir={out}",
            f"paths.cache_dir={cache}",
            "data.sources.unified.paths=[]",
            *train_overrides,
        ],
    )
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer = instantiate(cfg.backbone.tokenizer)
    model = instantiate(cfg.backbone.model)()
    return export_model(model, tokenizer, out, generation=dict(cfg.export.generation))


def run_mini(out: Path, train_overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every stage into ``out``; returns each stage's summary (also written to ``out/summary.json``)."""
    from huatuo.evaluation.run import evaluate
    from huatuo.inference.chat import HuatuoChat
    from huatuo.inference.server import transformers_serve
    from huatuo.training.run import train
    from huatuo.unify.run import unify

    train_overrides = list(train_overrides or [])
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    untrained = export_untrained(out / "untrained", cache, train_overrides)
    unified = out / "unify" / "unified.jsonl"
    export = out / "train" / "export"
    summary: dict[str, Any] = {}

    with transformers_serve(untrained, log_path=out / "serve.log") as url:
        log.info("[1/5] unify: %s passages through %s", huatuo.asset_path("demo/corpus_passages.jsonl"), url)
        summary["unify"] = unify(
            compose_stage(
                "unify",
                [
                    f"input={huatuo.asset_path('demo/corpus_passages.jsonl')}",
                    f"output={unified}",
                    f"endpoint.base_url={url}",
                    f"endpoint.model={untrained}",
                    f"paths.run_dir={out / 'unify'}",
                    *UNIFY,
                ],
                save_to=out / "unify",
            )
        )
        if not summary["unify"]["accepted_total"]:
            raise RuntimeError(f"unify accepted no passage; see {out / 'unify'} and {out / 'serve.log'}")

        log.info("[2/5] prepare + train on the unified pairs and the demo SFT dialogues")
        metrics = train(
            compose_stage(
                "train",
                [
                    "experiment=mini",
                    f"paths.run_dir={out / 'train'}",
                    f"paths.cache_dir={cache}",
                    f"data.sources.unified.paths=[{unified}]",
                    *train_overrides,
                ],
            )
        )
        summary["train"] = {k: v for k, v in metrics.items() if k in ("train/loss", "train/token_acc", "global_step")}

        for mode in ("loglik", "generate"):
            log.info("[3/5] evaluate the export on the demo exam (%s)", mode)
            result = evaluate(
                compose_stage(
                    "evaluate",
                    [
                        f"model_path={export}",
                        f"eval.mode={mode}",
                        f"paths.run_dir={out / f'eval_{mode}'}",
                        *EVALUATE,
                    ],
                )
            )
            summary[f"eval_{mode}"] = {k: result["summary"][k] for k in ("n", "accuracy", "miss_rate")}

        log.info("[4/5] judge: trained vs untrained, both orders")
        result = evaluate(
            compose_stage(
                "evaluate",
                [
                    f"model_path={export}",
                    f"eval.model_b.model_path={untrained}",
                    f"eval.judge.base_url={url}",
                    f"eval.judge.model={untrained}",
                    f"paths.run_dir={out / 'judge'}",
                    *JUDGE,
                ],
            )
        )
        judged = result["summary"]
        summary["judge"] = {k: judged.get(k) for k in ("win", "tie", "loss", "judged")}
        summary["judge"]["incomplete"] = len(judged.get("incomplete") or [])

    log.info("[5/5] chat: one message to the trained model")
    chat = HuatuoChat.from_pretrained(str(export), max_new_tokens=48, do_sample=False)
    reply = chat.chat([{"role": "user", "content": CHAT_MESSAGE}])
    (out / "chat.txt").write_text(f"<问>：{CHAT_MESSAGE}\n<答>：{reply}\n", encoding="utf-8")
    summary["chat"] = {"message": CHAT_MESSAGE, "reply": reply}

    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str) + "\n")
    write_index(out, summary)
    log.info("mini reproduction done: %s (start with %s)", out, out / "README.md")
    return summary


def write_index(out: Path, summary: dict[str, Any]) -> None:
    """``out/README.md``: what each file of the run is, with the headline numbers."""
    u, t = summary["unify"], summary["train"]
    el, eg, j = summary["eval_loglik"], summary["eval_generate"], summary["judge"]
    rows = [
        (
            "untrained/",
            "the tiny backbone at its seeded initialisation, exported (served as the LLM endpoint and "
            "used as model B of the judge)",
        ),
        ("serve.log", "output of `transformers serve` for that model"),
        (
            "unify/unified.jsonl",
            f"accepted (question, answer) pairs: {u['accepted_total']} of {u['input_units']} passages",
        ),
        ("unify/unified.rejected.jsonl", f"rejected passages with their reason ({u['rejected_total']})"),
        ("unify/stats.json, unify/config.yaml", "unify statistics and the unify config as it ran"),
        ("train/stats.json, train/schedule.png", "prepare statistics per source and the curriculum picture"),
        (
            "train/metrics.csv",
            f"training metrics per step (final loss {t.get('train/loss', float('nan')):.3f} after "
            f"{t.get('global_step')} steps)",
        ),
        ("train/checkpoints/", "Lightning checkpoints (last.ckpt resumes with resume=auto)"),
        ("train/export/", "the trained model: safetensors, tokenizer, chat template, generation config"),
        ("train/resolved_config.yaml", "the training config as it ran"),
        (
            "eval_loglik/",
            f"demo exam, log-likelihood mode: accuracy {el['accuracy']:.1%} over {el['n']} questions "
            "(results.md, results.json, predictions.jsonl, the per-subject plot, resolved_config.yaml)",
        ),
        (
            "eval_generate/",
            f"demo exam, the paper's generation protocol: accuracy {eg['accuracy']:.1%}, miss rate "
            f"{eg['miss_rate']:.1%}",
        ),
        (
            "judge/",
            f"trained vs untrained: win {j['win']} / tie {j['tie']} / loss {j['loss']}, {j['incomplete']} questions "
            "without two readable verdicts (a tiny judge's verdicts are unreadable: reported, never guessed); both "
            "models' answers, judgments.jsonl, results.md",
        ),
        ("chat.txt", "one message and the trained model's reply"),
        ("summary.json", "the numbers above, machine-readable"),
        ("cache/", "prepared datasets keyed by fingerprint (safe to delete)"),
    ]
    lines = [
        "# Mini reproduction of HuatuoGPT-II",
        "",
        f"Made by `python -m huatuo.mini` on {datetime.now():%Y-%m-%d %H:%M}. Every stage of the method ran on the "
        "tiny demo backbone; the numbers are noise from a model of a few million parameters, the layout is the real "
        "one (docs/reproduce.md gives the same path at paper scale).",
        "",
        "| path | what it is |",
        "| --- | --- |",
        *[f"| `{path}` | {what} |" for path, what in rows],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    """``python -m huatuo.mini [--out DIR] [train overrides...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: outputs/mini/<time>)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. trainer.max_steps=80")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    out = args.out or Path("outputs") / "mini" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"
    run_mini(out, args.overrides)


if __name__ == "__main__":
    main()
