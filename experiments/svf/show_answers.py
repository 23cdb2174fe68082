"""Greedy answers of the base model and of arithmetic experts on the first adaptation test questions.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python experiments/svf/show_answers.py [--n 8] [--seeds 2 1]``
(needs the expert files that ``run.py --phases experts`` writes).
"""

from __future__ import annotations

import argparse

import run
import torch

from testtime.llm.loading import load_model
from testtime.llm.local import LocalLLM
from testtime.svf.experts import load_expert
from testtime.svf.svf import SVF, SVFConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="arithmetic", choices=sorted(run.TASKS))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model()
    llm = LocalLLM(model, tokenizer, num_threads=1)
    svf = SVF(model, SVFConfig(), progress=False)
    task, items = run._instances(args.task, "test", args.n, 2000)  # the adaptation test questions
    chats = [[{"role": "user", "content": task.prompt(i)}] for i in items]
    tokens = run.TASKS[args.task][3]

    def show(label: str) -> None:
        svf.merge(llm)
        for item, choices in zip(items, llm.generate(chats, temperature=0, max_tokens=tokens), strict=True):
            text = choices[0].text
            print(label, task.verify(item, text).solved, repr(text[:150]))

    svf.reset()
    show("base")
    for seed in args.seeds:
        svf.reset()
        load_expert(run.EXPERTS / f"{args.task}-svf-seed{seed}.safetensors").apply(svf)
        show(f"seed{seed}")
    svf.reset()
    svf.restore(llm)


if __name__ == "__main__":
    main()
