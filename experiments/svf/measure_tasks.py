"""Which task families is the embedded model not at zero on? Greedy accuracy on training-split instances.

Usage: nice -n 5 .venv/bin/python experiments/svf/measure_tasks.py [--n 40]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from testtime.llm.local import LocalLLM
from testtime.svf.reinforce import ClozeEnv, GenerationEnv, SVFPolicy
from testtime.svf.svf import SVF, SVFConfig
from testtime.tasks import get_task

CANDIDATES = [
    ("arc-easy", {}, "cloze"),
    ("arc-challenge", {}, "cloze"),
    ("arithmetic", {"digits": 2, "terms": 2}, "generate"),
    ("arithmetic", {"digits": 1, "terms": 3}, "generate"),
    ("countdown", {"num_numbers": 2, "max_number": 20}, "generate"),
    ("calendar-scheduling", {"num_people": 2}, "generate"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    llm = LocalLLM.from_name(num_threads=1)
    start = time.perf_counter()
    svf = SVF(llm.model, SVFConfig(), progress=True)
    print(
        json.dumps({"svd_seconds": round(time.perf_counter() - start, 1), "svf_params": svf.num_trainable()})
    )
    policy = SVFPolicy(svf, llm.tokenizer, llm)
    for name, knobs, mode in CANDIDATES:
        task = get_task(name)
        items = task.instances("train", seed=0, n=args.n, **knobs)
        env = ClozeEnv(task) if mode == "cloze" else GenerationEnv(task, max_new_tokens=96)
        start = time.perf_counter()
        accuracy = env.evaluate(policy, items)
        print(
            json.dumps(
                {
                    "task": name,
                    "knobs": knobs,
                    "mode": mode,
                    "n": args.n,
                    "accuracy": accuracy,
                    "seconds": round(time.perf_counter() - start, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
