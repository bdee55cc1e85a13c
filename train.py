"""Train a HuatuoGPT-II style model: prepare the data mixture, fit, export.

    python train.py                                   # the embedded demo (tiny backbone, bundled data, CPU)
    python train.py experiment=smoke                  # a few steps, to check an installation
    python train.py data.sources.sft.priority=4 trainer.max_steps=100
    python train.py -m data.sources.sft.priority=1,4  # a sweep: one run folder, checkpoint and export per value
    python train.py hydra.run.dir=outputs/run1 resume=auto   # continue an interrupted run

The same function is installed as `huatuo-train`. Configs live in conf/ (train.yaml and its groups).
"""

from huatuo.train import main

if __name__ == "__main__":
    main()
