"""How well can any function of (state, action) rank held-out states like their MC returns?

A critic's ``q_data_mc_corr`` compares Q(s, a_data) with single-episode Monte-Carlo returns of a
noisy behaviour: even the true expected return E[G | s, a] is not perfectly correlated with one
sampled G. This fits the critic's own shape (two 256-wide ReLU layers on the standardised
low-dimensional state and the action) directly to the MC returns of the training split by mean
squared error, and reports its correlation with the MC returns of the held-out states the
pretraining runs measure (the same 1024 ``valid`` states, the same seed): an estimate of the
ceiling a critic can reach on this data. A state-only fit V(s) is reported too.

    python docs/results/calibration_screen/mc_regression_ceiling.py [--path data/pickplace.hdf5] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from datasets.offline import load_replay
from datasets.returns import RewardConfig
from policy.evaluation import calibration_batch
from policy.networks import mlp

OBS_KEYS = ["robot0_eef_pos", "robot0_gripper_qpos", "object"]


def inputs(obs: dict, actions: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    state = (torch.cat([torch.as_tensor(obs[key]).float().flatten(1) for key in OBS_KEYS], dim=1) - mean) / std
    return state if actions is None else torch.cat([state, torch.as_tensor(actions).float()], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="data/pickplace.hdf5")
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--bias", type=float, default=-5.0, help="reward bias (scale 10): -5 is the +-5 mapping")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0, help="the pretraining run's seed (its states are seed + 1's)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    reward = RewardConfig(scale=10.0, bias=args.bias)
    replay, _ = load_replay(args.path, OBS_KEYS, args.gamma, reward, "train", "success", None, "cpu")
    held_out = calibration_batch(args.path, OBS_KEYS, args.gamma, reward, "success", "valid", 1024, args.seed + 1, replay)
    train = replay.gather(np.arange(len(replay)), args.gamma)
    stats = replay.lowdim_stats()
    mean = torch.as_tensor(np.concatenate([np.ravel(stats[k][0]) for k in OBS_KEYS])).float()
    std = torch.as_tensor(np.maximum(np.concatenate([np.ravel(stats[k][1]) for k in OBS_KEYS]), 1e-3)).float()
    targets = torch.as_tensor(train.mc_returns).float()
    held_out_returns = torch.as_tensor(held_out.mc_returns).float().numpy()
    print(f"{len(replay)} training transitions; held-out mean MC {held_out_returns.mean():.1f}, std {held_out_returns.std():.1f}")
    for name, with_action in (("Q_mc(s, a)", True), ("V_mc(s)", False)):
        x = inputs(train.obs, train.actions if with_action else None, mean, std)
        x_held = inputs(held_out.obs, held_out.actions if with_action else None, mean, std)
        model = mlp(x.shape[1], 256, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
        for step in range(1, args.steps + 1):
            rows = torch.randint(0, len(x), (256,))
            loss = ((model(x[rows]).squeeze(-1) - targets[rows]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 1000 == 0:
                with torch.no_grad():
                    predicted = model(x_held).squeeze(-1).numpy()
                corr = np.corrcoef(predicted, held_out_returns)[0, 1]
                print(f"{name} step {step}: train mse {loss.item():.1f}, held-out mean {predicted.mean():.1f}, corr {corr:.3f}")


if __name__ == "__main__":
    main()
