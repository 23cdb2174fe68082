"""Does a REINFORCE step without signal move z? Zero advantages leave only the KL's gradient, float noise at z = 1.

Samples 4 reading rollouts from the base model, compares the factored forward at z = 1 with the base weights,
then takes one Adam step (lr 1e-2, clip 1e-3) on the KL term alone and measures the KL again.

Usage: OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/svf/check_kl_noise.py
"""

from __future__ import annotations

import torch

from testtime.llm.local import LocalLLM
from testtime.svf.reinforce import GenerationEnv, ReinforceConfig, SVFPolicy, _rollouts, k3_kl
from testtime.svf.svf import SVF, SVFConfig
from testtime.tasks import get_task


def main() -> None:
    torch.set_num_threads(1)
    llm = LocalLLM.from_name(num_threads=1)
    svf = SVF(llm.model, SVFConfig(), progress=False)
    policy = SVFPolicy(svf, llm.tokenizer, llm)
    task = get_task("reading")
    items = task.instances("train", seed=0, n=2, people=3, facts=1)
    env = GenerationEnv(task, max_new_tokens=24)
    policy.sync_for_sampling()
    rollouts, _ = _rollouts(env, policy, items, ReinforceConfig(num_samples=2, temperature=1.0), 0)
    with torch.no_grad(), policy.training() as model:
        current = env.policy_output(model, rollouts, normalize="sum", temperature=1.0)
        with policy.reference():
            reference = env.policy_output(model, rollouts, normalize="sum", temperature=1.0)
    gap = ((current.logps - reference.logps).abs() * current.mask).max().item()
    print(
        f"z = 1: KL {k3_kl(current.logps, reference.logps, current.mask).tolist()}, max |logp gap| {gap:.2e}"
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    with policy.training() as model:
        current = env.policy_output(model, rollouts, normalize="sum", temperature=1.0)
        (0.05 * k3_kl(current.logps, reference.logps, current.mask).mean()).backward()
    grad = torch.cat([p.grad.flatten() for p in policy.parameters()])
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1e-3)
    optimizer.step()
    z = torch.cat([p.detach().flatten() for p in policy.parameters()])
    with torch.no_grad(), policy.training() as model:
        after = env.policy_output(model, rollouts, normalize="sum", temperature=1.0)
    kl = [round(x, 2) for x in k3_kl(after.logps, reference.logps, after.mask).tolist()]
    print(f"KL-only gradient norm {grad.norm().item():.2e}; after one Adam step mean |z - 1| "
          f"{(z - 1).abs().mean().item():.4f}, KL on the same rollouts {kl}")  # fmt: skip


if __name__ == "__main__":
    main()
