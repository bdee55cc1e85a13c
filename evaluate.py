"""Evaluate a model: medical exams (fast log-likelihood or the paper's generation protocol) and pairwise LLM judging.

    python evaluate.py model_path=outputs/train/<time>/export                 # the demo exam, loglik mode
    python evaluate.py model_path=DIR eval=pharmacist eval.mode=generate      # the paper's protocol and exam
    python evaluate.py model_path=DIR eval=mcq eval.data=my_exam.json         # any exam file or folder
    python evaluate.py model_path=DIR eval=judge_inst eval.model_b.answers=ref.jsonl eval.judge.model=gpt-4o
    python evaluate.py -m model_path=A,B eval=cmb                             # several models, one run folder each

The same function is installed as `huatuo-evaluate`. Configs: conf/evaluate.yaml and conf/eval/ (the suites).
Details: docs/evaluation.md.
"""

from huatuo.evaluate import main

if __name__ == "__main__":
    main()
