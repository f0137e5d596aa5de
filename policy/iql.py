"""IQL: Implicit Q-Learning (Kostrikov et al., ICLR 2022).

Never queries Q at actions outside the data. V(s) is fitted by expectile regression to
``min_j Qtarg_j(s, a_data)`` (an upper expectile approximates the max over in-support
actions), Q to ``r + gamma (1 - terminal) V(s')``, and the actor by advantage-weighted
regression: ``-mean(min(exp(beta * (Qtarg(s, a) - V(s))), 100) * log pi(a_data | s))``, beta an
inverse temperature. The critic's gradients train the image encoder; V and the actor read
detached features. The deterministic action is tanh of the policy mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datasets.replay import Batch, ObsSpec
from perception.encoders import EncoderConfig
from policy.agent import Agent, AlgoConfig, Metrics, td_loss
from policy.networks import TanhGaussianActor, ValueNetwork, soft_update, tanh_gaussian_log_prob


@dataclass
class IQLConfig(AlgoConfig):
    name: str = "iql"
    expectile: float = 0.7  # 0.9 for sparse-reward tasks (the paper's AntMaze setting)
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0  # advantage weights are clipped here
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4


def expectile_loss(diff: torch.Tensor, expectile: float) -> tuple[torch.Tensor, Metrics]:
    """Asymmetric squared loss of ``diff = target - V``: positive errors weigh ``expectile``,
    negative ones ``1 - expectile``."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    loss = (weight * diff**2).mean()
    return loss, {"value_loss": loss.detach()}


def advantage_weights(advantages: torch.Tensor, inverse_temperature: float, max_weight: float) -> torch.Tensor:
    """``min(exp(inverse_temperature * A), max_weight)``: AWR's weights, clipped."""
    return torch.exp(inverse_temperature * advantages).clamp(max=max_weight)


def weighted_log_likelihood_loss(logp_data: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """``-mean(weights * log pi(a_data | s))``: advantage-weighted regression of the actor."""
    loss = -(weights * logp_data).mean()
    return loss, {"actor_loss": loss.detach(), "bc_log_prob": logp_data.mean().detach(),
                  "adv_weight": weights.mean().detach(), "adv_weight_max": weights.max().detach()}


class IQLAgent(Agent):
    @classmethod
    def check_settings(cls, config: IQLConfig) -> None:
        super().check_settings(config)
        if not 0.0 < config.expectile < 1.0:
            raise ValueError(f"algo.expectile must be in (0, 1), got {config.expectile}")

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: IQLConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(obs_spec, action_dim, config, encoder_config, device)
        self.make_critic()
        self.value = ValueNetwork(self.encoder.output_dim, config.hidden_dim)
        self.actor = TanhGaussianActor(self.encoder.output_dim, action_dim, config.hidden_dim)
        self.to(self.device)
        self.optimizers = {
            "critic": self.critic_optimizer(config.critic_lr),
            "value": self.adam(self.value.parameters(), lr=config.value_lr),
            "actor": self.adam(self.actor.parameters(), lr=config.actor_lr),
        }

    def learn(self, batch: Batch) -> Metrics:
        cfg = self.config
        features = self.encoder(batch.obs, augment=True)
        detached = features.detach()
        with torch.no_grad():
            next_features = self.encoder(batch.next_obs, augment=True)
            q_target = self.target_critic(detached, batch.actions.unsqueeze(1)).min(dim=0).values[:, 0]

        # value: expectile regression toward the target critic at the data's actions
        v = self.value(detached)
        value_loss, metrics = expectile_loss(q_target - v, cfg.expectile)
        metrics.update(self.step("value", value_loss, "value_loss", {"value": self.value.parameters()}))

        # actor: advantage-weighted regression on the data's actions
        advantages = (q_target - v.detach())
        weights = advantage_weights(advantages, cfg.beta, cfg.max_weight)
        mean, log_std = self.actor(detached)
        actor_loss, actor_metrics = weighted_log_likelihood_loss(tanh_gaussian_log_prob(mean, log_std, batch.actions), weights)
        metrics.update(actor_metrics)
        metrics.update(self.step("actor", actor_loss, "actor_loss", {"actor": self.actor.parameters()}))

        # critic: TD toward r + gamma V(s'), with the value just updated
        with torch.no_grad():
            td_target = batch.rewards + batch.discounts * (1.0 - batch.terminals) * self.value(next_features)
        q_data = self.critic(features, batch.actions.unsqueeze(1))[:, :, 0]
        critic_loss, critic_metrics = td_loss(q_data, td_target, batch.online)
        metrics.update(critic_metrics)
        metrics.update(self.step_critic(critic_loss))
        soft_update(self.target_critic, self.critic, cfg.tau)

        metrics.update(
            critic_loss=critic_loss.detach(),
            q_data=q_data.mean().detach(),
            v=v.mean().detach(),
            advantage=advantages.mean().detach(),
            td_target=td_target.mean().detach(),
            mc_returns=batch.mc_returns.mean().detach(),
        )
        return metrics
