"""AWAC: Advantage-Weighted Actor-Critic (Nair et al., 2020).

Twin Q-functions trained by TD with the next action sampled from the current policy (no
entropy term, no conservative penalty); the actor maximises
``mean(min(exp(A(s, a_data) / lambda), 100) * log pi(a_data | s))`` with
``A = min_j Q_j(s, a_data) - min_j Q_j(s, a~pi(s))``. Online, AWAC's own protocol keeps
offline and online data in one buffer sampled uniformly (``policy.finetune sampling=uniform``).
The critic's gradients train the image encoder; the actor reads detached features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datasets.replay import Batch, ObsSpec
from perception.encoders import EncoderConfig
from policy.agent import Agent, AlgoConfig, Metrics, td_loss
from policy.iql import advantage_weights, weighted_log_likelihood_loss
from policy.networks import TanhGaussianActor, sample_tanh_gaussian, soft_update, tanh_gaussian_log_prob


@dataclass
class AWACConfig(AlgoConfig):
    name: str = "awac"
    awac_lambda: float = 1.0  # temperature of the advantage weights exp(A / lambda)
    max_weight: float = 100.0  # advantage weights are clipped here
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4


class AWACAgent(Agent):
    @classmethod
    def check_settings(cls, config: AWACConfig) -> None:
        super().check_settings(config)
        if config.awac_lambda <= 0:
            raise ValueError(f"algo.awac_lambda must be positive, got {config.awac_lambda}")

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: AWACConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(obs_spec, action_dim, config, encoder_config, device)
        self.make_critic()
        self.actor = TanhGaussianActor(self.encoder.output_dim, action_dim, config.hidden_dim)
        self.to(self.device)
        self.optimizers = {
            "critic": self.critic_optimizer(config.critic_lr),
            "actor": self.adam(self.actor.parameters(), lr=config.actor_lr),
        }

    def learn(self, batch: Batch) -> Metrics:
        cfg = self.config
        features = self.encoder(batch.obs, augment=True)
        detached = features.detach()

        # critic: TD toward r + gamma min_j Qtarg_j(s', a'), a' ~ pi(s')
        with torch.no_grad():
            next_features = self.encoder(batch.next_obs, augment=True)
            next_actions, _ = sample_tanh_gaussian(*self.actor(next_features), 1)
            next_q = self.target_critic(next_features, next_actions).min(dim=0).values[:, 0]
            td_target = batch.rewards + batch.discounts * (1.0 - batch.terminals) * next_q
            policy_actions, _ = sample_tanh_gaussian(*self.actor(detached), 1)
        # one critic pass scores the data's actions (for TD) and a policy sample (the baseline V)
        q_all = self.critic(features, torch.cat([batch.actions.unsqueeze(1), policy_actions], dim=1))
        q_data = q_all[:, :, 0]
        critic_loss, metrics = td_loss(q_data, td_target, batch.online)
        metrics.update(self.step_critic(critic_loss))

        # actor: advantage-weighted log-likelihood of the data's actions
        with torch.no_grad():
            q_min = q_all.detach().min(dim=0).values
            advantages = q_min[:, 0] - q_min[:, 1]
            weights = advantage_weights(advantages, 1.0 / cfg.awac_lambda, cfg.max_weight)
        mean, log_std = self.actor(detached)
        actor_loss, actor_metrics = weighted_log_likelihood_loss(tanh_gaussian_log_prob(mean, log_std, batch.actions), weights)
        metrics.update(actor_metrics)
        metrics.update(self.step("actor", actor_loss, "actor_loss", {"actor": self.actor.parameters()}))
        soft_update(self.target_critic, self.critic, cfg.tau)

        metrics.update(
            critic_loss=critic_loss.detach(),
            q_data=q_data.mean().detach(),
            advantage=advantages.mean().detach(),
            td_target=td_target.mean().detach(),
            mc_returns=batch.mc_returns.mean().detach(),
        )
        return metrics
