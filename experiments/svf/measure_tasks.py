"""Which task families is the embedded model not at zero on? Greedy accuracy on training-split instances.

Usage: nice -n 5 .venv/bin/python experiments/svf/measure_tasks.py [--n 40] [--only reading] [--show 3]

No SVF is built: the base model is measured as loaded (SVF with z = 1 is the same model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from testtime.llm.local import LocalLLM
from testtime.svf.reinforce import ClozeEnv, GenerationEnv
from testtime.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent))
from run import wilson  # noqa: E402

# (task, knobs, mode, max new tokens)
CANDIDATES = [
    ("arc-easy", {}, "cloze", 8),
    ("arc-challenge", {}, "cloze", 8),
    ("arithmetic", {"digits": 2, "terms": 2}, "generate", 96),
    ("arithmetic", {"digits": 1, "terms": 3}, "generate", 96),
    ("countdown", {"num_numbers": 2, "max_number": 20}, "generate", 96),
    ("calendar-scheduling", {"num_people": 2}, "generate", 96),
    ("reading", {"people": 2, "facts": 1}, "generate", 24),
    ("reading", {"people": 3, "facts": 1}, "generate", 24),  # the experiments' setting
    ("reading", {"people": 3, "facts": 2}, "generate", 24),
    ("reading", {"people": 4, "facts": 2}, "generate", 24),
    ("reading", {"people": 6, "facts": 3}, "generate", 24),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--only", nargs="*", default=None, help="only these task names")
    parser.add_argument("--show", type=int, default=0, help="print this many greedy answers per candidate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    llm = LocalLLM.from_name(num_threads=1)
    policy = _BasePolicy(llm)
    for name, knobs, mode, tokens in CANDIDATES:
        if args.only is not None and name not in args.only:
            continue
        task = get_task(name)
        items = task.instances("train", seed=0, n=args.n, **knobs)
        env = ClozeEnv(task) if mode == "cloze" else GenerationEnv(task, max_new_tokens=tokens)
        start = time.perf_counter()
        accuracy = env.evaluate(policy, items)
        record = {"task": name, "knobs": knobs, "mode": mode, "tokens": tokens, "n": args.n,
                  "accuracy": accuracy, "ci95": wilson(accuracy * args.n, args.n),
                  "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        if mode == "generate" and any("kind" in i.data for i in items):  # reading: attribute vs "who"
            outputs = llm.generate([env._prompt(i) for i in items], temperature=0, max_tokens=tokens)
            by_kind: dict[str, list[int]] = {}
            for item, out in zip(items, outputs, strict=True):
                counts = by_kind.setdefault(str(item.data.get("kind")), [0, 0])
                counts[0] += task.verify(item, out[0].text).solved
                counts[1] += 1
            record["solved_by_kind"] = {k: f"{a}/{b}" for k, (a, b) in by_kind.items()}
        print(json.dumps(record), flush=True)
        if args.show and mode == "generate":
            shown = items[: args.show]
            outputs = llm.generate([env._prompt(i) for i in shown], temperature=0, max_tokens=tokens)
            for item, out in zip(shown, outputs, strict=True):
                verdict = task.verify(item, out[0].text)
                print(json.dumps({"gold": item.reference, "answer": out[0].text, "solved": verdict.solved}))


class _BasePolicy:
    """The loaded model as an evaluation policy (what the environments' ``evaluate`` needs)."""

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self.model = llm.model

    def sync_for_sampling(self) -> None:
        pass


if __name__ == "__main__":
    main()
