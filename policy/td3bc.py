"""TD3+BC (Fujimoto and Gu, NeurIPS 2021): TD3 with a behaviour-cloning term in the actor.

Twin Q-functions trained by TD toward ``r + gamma min_j Qtarg_j(s', pi_targ(s') + clip(noise))``
(target policy smoothing: Gaussian noise of std 0.2 clipped at 0.5); every ``policy_delay``
critic updates, the deterministic tanh actor minimises
``-lambda * Q_1(s, pi(s)) / mean|Q_1| + mean((pi(s) - a_data)^2)`` and the target actor and
critics move by ``tau``. Online it explores with Gaussian noise of std ``exploration_noise``.
The critic's gradients train the image encoder; the actor reads detached features.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from datasets.replay import Batch, ObsSpec
from perception.encoders import EncoderConfig
from policy.agent import Agent, AlgoConfig, Metrics, td_loss
from policy.networks import DeterministicActor, soft_update


@dataclass
class TD3BCConfig(AlgoConfig):
    name: str = "td3bc"
    bc_lambda: float = 2.5  # weight of the normalised Q term against the BC term
    policy_delay: int = 2  # critic updates per actor (and target) update
    policy_noise: float = 0.2  # target policy smoothing noise std
    noise_clip: float = 0.5
    exploration_noise: float = 0.1  # online action noise std
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4


def td3bc_actor_loss(q_policy: torch.Tensor, policy_actions: torch.Tensor, data_actions: torch.Tensor,
                     bc_lambda: float) -> tuple[torch.Tensor, Metrics]:
    """``-lambda * mean(Q) / mean|Q| + mean((pi(s) - a_data)^2)``; the normaliser is a constant."""
    q_scale = q_policy.abs().mean().detach()
    q_term = -bc_lambda * q_policy.mean() / q_scale
    bc_mse = ((policy_actions - data_actions) ** 2).mean()
    loss = q_term + bc_mse
    return loss, {"actor_loss": loss.detach(), "q_policy": q_policy.mean().detach(), "q_scale": q_scale.detach(),
                  "bc_mse": bc_mse.detach()}


class TD3BCAgent(Agent):
    @classmethod
    def check_settings(cls, config: TD3BCConfig) -> None:
        super().check_settings(config)
        if config.policy_delay < 1:
            raise ValueError(f"algo.policy_delay must be >= 1, got {config.policy_delay}")

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: TD3BCConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(obs_spec, action_dim, config, encoder_config, device)
        self.make_critic()
        self.actor = DeterministicActor(self.encoder.output_dim, action_dim, config.hidden_dim)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.to(self.device)
        self.optimizers = {
            "critic": self.critic_optimizer(config.critic_lr),
            "actor": self.adam(self.actor.parameters(), lr=config.actor_lr),
        }

    def explore(self, features: torch.Tensor) -> torch.Tensor:
        actions = self.actor(features)
        noise = self.exploration_scale * self.config.exploration_noise * torch.randn_like(actions)
        return (actions + noise).clamp(-1.0, 1.0)

    def learn(self, batch: Batch) -> Metrics:
        cfg = self.config
        features = self.encoder(batch.obs, augment=True)

        # critic: TD toward the smoothed target policy's value
        with torch.no_grad():
            next_features = self.encoder(batch.next_obs, augment=True)
            next_actions = self.target_actor(next_features)
            noise = (cfg.policy_noise * torch.randn_like(next_actions)).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (next_actions + noise).clamp(-1.0, 1.0)
            next_q = self.target_critic(next_features, next_actions.unsqueeze(1)).min(dim=0).values[:, 0]
            td_target = batch.rewards + batch.discounts * (1.0 - batch.terminals) * next_q
        q_data = self.critic(features, batch.actions.unsqueeze(1))[:, :, 0]
        critic_loss, metrics = td_loss(q_data, td_target, batch.online)
        metrics.update(self.step_critic(critic_loss))

        # actor and targets, every policy_delay critic updates (this one counted)
        if (self.num_updates + 1) % cfg.policy_delay == 0:
            policy_actions = self.actor(features.detach())
            self.critic.requires_grad_(False)
            q_policy = self.critic(features.detach(), policy_actions.unsqueeze(1))[0, :, 0]  # Q_1, as TD3
            self.critic.requires_grad_(True)
            actor_loss, actor_metrics = td3bc_actor_loss(q_policy, policy_actions, batch.actions, cfg.bc_lambda)
            metrics.update(actor_metrics)
            metrics.update(self.step("actor", actor_loss, "actor_loss", {"actor": self.actor.parameters()}))
            soft_update(self.target_critic, self.critic, cfg.tau)
            soft_update(self.target_actor, self.actor, cfg.tau)

        metrics.update(
            critic_loss=critic_loss.detach(),
            q_data=q_data.mean().detach(),
            td_target=td_target.mean().detach(),
            mc_returns=batch.mc_returns.mean().detach(),
        )
        return metrics
