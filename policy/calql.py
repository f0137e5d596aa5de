"""Cal-QL: CQL whose conservative penalty is bounded below by Monte-Carlo returns.

This file is the SAC family the baselines share: ``algo=calql`` (the default), ``algo=cql``
(no MC bound) and ``algo=sac`` (no conservative penalty, entropy in the backup: online SAC).

Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online
Fine-Tuning" (NeurIPS 2023). The only change to CQL: inside the CQL regulariser, Q-values of
actions sampled from the current policy (at s and at s') are replaced by
``max(Q(s, a_pi), mc_return(s))``. ``calibrated=False`` gives plain CQL (``algo=cql``).

Critic, per Q head i: a TD loss to ``r + gamma (1 - terminal) max_k min_j Qtarg_j(s', a'_k)``
(max backup over k policy samples, no entropy term) plus
``alpha * mean(temp * logsumexp([Q_rand - log 0.5^d, Q_next - logpi_next, Q_cur - logpi_cur]
/ temp) - Q_i(s, a_data))`` over n samples of each kind, all scored at s. Actor: SAC with
automatic entropy tuning. The critic's gradients train the image encoder; the actor reads
detached features. Each state is encoded once per update and reused by every sampled action.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from datasets.replay import ObsSpec
from perception.encoders import EncoderConfig, ObservationEncoder
from policy.networks import EnsembleCritic, TanhGaussianActor, sample_tanh_gaussian, soft_update, tanh_gaussian_log_prob


@dataclass
class CalQLConfig:
    name: str = "calql"
    calibrated: bool = True  # the MC lower bound; False is CQL
    gamma: float = 0.99
    n_step: int = 1  # TD targets over n dataset steps (the replay builds them); 1 = the reference
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    tau: float = 5e-3
    hidden_dim: int = 256
    conservative: bool = True  # the CQL regulariser; False is SAC
    cql_alpha: float = 5.0
    cql_num_actions: int = 10
    cql_temperature: float = 1.0
    cql_lagrange: bool = False  # adapt alpha so the CQL gap approaches cql_target_action_gap
    cql_target_action_gap: float = 0.8
    backup_num_actions: int = 10  # max target backup over this many policy samples; 1 = plain
    entropy_backup: bool = False  # subtract alpha * logpi(a'|s') in the TD target (SAC)
    init_entropy_alpha: float = 1.0
    # Behaviour-cloning warm start of the actor for the first bc_steps updates (CQL's
    # "policy_eval_start"): the actor loss is alpha * logpi(a~pi) - logpi(a_data).
    bc_steps: int = 0
    # The actor gets its own encoder, trained by the actor's loss (robomimic's layout), instead
    # of reading the critic's features detached (DrQ's).
    separate_actor_encoder: bool = False
    # After the warm start, add w * mean|Q| * |tanh(mean) - a_data|^2 to the actor loss (TD3+BC's
    # constraint, scale-free in Q; TD3+BC's lambda 2.5 is w = 0.4). 0 is the reference.
    actor_bc_weight: float = 0.0
    target_entropy: float | None = None  # default: -action_dim


class NonFiniteLossError(RuntimeError):
    pass


def td_loss(q_data: torch.Tensor, td_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over Q heads of the mean squared TD error. ``q_data``: (C, B), ``td_target``: (B,)."""
    per_head = ((q_data - td_target.unsqueeze(0)) ** 2).mean(dim=1)
    return per_head.sum(), {"td_loss": per_head.mean().item()}


def cql_penalty(
    q_data: torch.Tensor,
    q_random: torch.Tensor,
    q_current: torch.Tensor,
    q_next: torch.Tensor,
    logp_current: torch.Tensor,
    logp_next: torch.Tensor,
    mc_returns: torch.Tensor | None,
    action_dim: int,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-head CQL gap ``mean(temp * logsumexp(ood / temp) - Q(s, a_data))``, shape (C,).

    Shapes: ``q_data`` (C, B); ``q_random``/``q_current``/``q_next`` (C, B, n);
    ``logp_*`` (B, n). With ``mc_returns`` (B,) this is Cal-QL: the two policy-action terms
    are bounded below by the MC return; random and dataset actions are not.
    """
    metrics: dict[str, float] = {}
    if mc_returns is not None:
        bound = mc_returns.view(1, -1, 1)
        metrics["bound_rate"] = torch.cat([q_current < bound, q_next < bound], dim=-1).float().mean().item()
        q_current = torch.maximum(q_current, bound)
        q_next = torch.maximum(q_next, bound)
    log_uniform_density = action_dim * math.log(0.5)
    ood = torch.cat(
        [q_random - log_uniform_density, q_next - logp_next.unsqueeze(0), q_current - logp_current.unsqueeze(0)], dim=-1
    )
    ood_value = temperature * torch.logsumexp(ood / temperature, dim=-1)  # (C, B)
    gap = (ood_value - q_data).mean(dim=1)
    metrics.update(
        cql_gap=gap.mean().item(),
        cql_ood_value=ood_value.mean().item(),
        q_random=q_random.mean().item(),
        q_current=q_current.mean().item(),
        q_next=q_next.mean().item(),
    )
    return gap, metrics


def sac_actor_loss(logp: torch.Tensor, q_min: torch.Tensor, entropy_alpha: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    loss = (entropy_alpha * logp - q_min).mean()
    return loss, {"actor_loss": loss.item(), "entropy": -logp.mean().item(), "q_policy": q_min.mean().item()}


def bc_regularizer(mean: torch.Tensor, actions: torch.Tensor, q_min: torch.Tensor, weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``weight * mean|Q| * mean ||tanh(mean) - a_data||^2``: ties the actor to the data's actions in
    proportion to the Q scale, so the weight does not depend on the reward scale."""
    squared_error = ((torch.tanh(mean) - actions) ** 2).sum(-1).mean()
    loss = weight * q_min.abs().mean().detach() * squared_error
    return loss, {"bc_mse": squared_error.item(), "bc_loss": loss.item()}


def bc_actor_loss(logp: torch.Tensor, logp_data: torch.Tensor, entropy_alpha: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    loss = (entropy_alpha * logp).mean() - logp_data.mean()
    return loss, {"actor_loss": loss.item(), "entropy": -logp.mean().item(), "bc_log_prob": logp_data.mean().item()}


def entropy_alpha_loss(log_alpha: torch.Tensor, logp: torch.Tensor, target_entropy: float) -> tuple[torch.Tensor, dict[str, float]]:
    loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
    return loss, {"entropy_alpha": log_alpha.exp().item()}


def to_torch(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in obs.items()}


def _grad_norm(parameters) -> float:
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


class CalQLAgent(nn.Module):
    """``act(obs)``, ``update(batch) -> metrics``, ``state_dict``/``load_state_dict``."""

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: CalQLConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        if config.n_step < 1:
            raise ValueError(f"algo.n_step must be >= 1, got {config.n_step}")
        if config.actor_bc_weight < 0:
            raise ValueError(f"algo.actor_bc_weight must be >= 0, got {config.actor_bc_weight}")
        self.config = config
        self.action_dim = action_dim
        self.device = torch.device(device)
        self.target_entropy = config.target_entropy if config.target_entropy is not None else -float(action_dim)
        self.encoder = ObservationEncoder(obs_spec, encoder_config)
        self.actor_encoder = ObservationEncoder(obs_spec, encoder_config) if config.separate_actor_encoder else None
        self.critic = EnsembleCritic(self.encoder.output_dim, action_dim, config.hidden_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor = TanhGaussianActor(self.encoder.output_dim, action_dim, config.hidden_dim)
        self.log_entropy_alpha = nn.Parameter(torch.tensor(math.log(config.init_entropy_alpha)))
        self.log_cql_alpha = nn.Parameter(torch.tensor(math.log(max(config.cql_alpha, 1e-8))))
        self.to(self.device)
        self.critic_optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.critic.parameters()], lr=config.critic_lr)
        actor_parameters = [*self.actor.parameters(), *(self.actor_encoder.parameters() if self.actor_encoder else [])]
        self.actor_optimizer = torch.optim.Adam(actor_parameters, lr=config.actor_lr)
        self.entropy_optimizer = torch.optim.Adam([self.log_entropy_alpha], lr=config.alpha_lr)
        self.cql_alpha_optimizer = torch.optim.Adam([self.log_cql_alpha], lr=config.critic_lr)
        self.num_updates = 0

    # ----------------------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (dict of (B, ...) arrays), in [-1, 1]."""
        features = (self.actor_encoder or self.encoder)(to_torch(obs, self.device))
        if deterministic:
            actions = self.actor.deterministic(features)
        else:
            actions = self.actor.sample(features, 1)[0][:, 0]
        return actions.cpu().numpy()

    @torch.no_grad()
    def q_values(self, obs: dict[str, np.ndarray], actions: np.ndarray | None = None) -> np.ndarray:
        """min over heads of Q(s, a); a defaults to the deterministic policy action."""
        obs_t = to_torch(obs, self.device)
        features = self.encoder(obs_t)
        if actions is None:
            actor_features = features if self.actor_encoder is None else self.actor_encoder(obs_t)
            a = self.actor.deterministic(actor_features)
        else:
            a = torch.as_tensor(actions, device=self.device)
        return self.critic(features, a.unsqueeze(1)).min(dim=0).values[:, 0].cpu().numpy()

    def set_lowdim_normalization(self, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Standardise low-dimensional inputs with the training data's statistics (every encoder)."""
        for encoder in (self.encoder, self.actor_encoder):
            if encoder is not None:
                encoder.set_lowdim_normalization(stats)

    # --------------------------------------------------------------------------- learning
    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg = self.config
        obs = to_torch(batch["obs"], self.device)
        next_obs = to_torch(batch["next_obs"], self.device)
        actions = torch.as_tensor(batch["actions"], device=self.device)
        rewards = torch.as_tensor(batch["rewards"], device=self.device)
        terminals = torch.as_tensor(batch["terminals"], device=self.device)
        mc_returns = torch.as_tensor(batch["mc_returns"], device=self.device)
        # n-step batches carry gamma**m for the m steps each transition spans.
        discounts = torch.as_tensor(batch["discounts"], device=self.device) if "discounts" in batch else cfg.gamma
        batch_size, n = actions.shape[0], cfg.cql_num_actions

        features = self.encoder(obs, augment=True)
        actor_features = self.actor_encoder(obs, augment=True) if self.actor_encoder else features.detach()
        with torch.no_grad():
            next_features = self.encoder(next_obs, augment=True)
            next_actor_features = self.actor_encoder(next_obs, augment=True) if self.actor_encoder else next_features
            next_mean, next_log_std = self.actor(next_actor_features)
            backup_actions, backup_logp = sample_tanh_gaussian(next_mean, next_log_std, cfg.backup_num_actions)
            backup_q = self.target_critic(next_features, backup_actions).min(dim=0).values
            if cfg.entropy_backup:
                backup_q = backup_q - self.log_entropy_alpha.exp() * backup_logp
            target_q = backup_q.max(dim=1).values
            td_target = rewards + discounts * (1.0 - terminals) * target_q

        if not cfg.conservative:
            q_data = self.critic(features, actions.unsqueeze(1))[:, :, 0]
            critic_loss, metrics = td_loss(q_data, td_target)
            penalty, cql_alpha = torch.zeros(()), torch.zeros(())
        else:
            with torch.no_grad():
                random_actions = torch.empty(batch_size, n, self.action_dim, device=self.device).uniform_(-1.0, 1.0)
                current_actions, logp_current = sample_tanh_gaussian(*self.actor(actor_features.detach()), n)
                next_actions, logp_next = sample_tanh_gaussian(next_mean, next_log_std, n)
            all_actions = torch.cat([actions.unsqueeze(1), random_actions, current_actions, next_actions], dim=1)
            q_all = self.critic(features, all_actions)  # (C, B, 1 + 3n)
            q_data = q_all[:, :, 0]
            q_random, q_current, q_next = q_all[:, :, 1:].split(n, dim=-1)
            loss_td, metrics = td_loss(q_data, td_target)
            gap, cql_metrics = cql_penalty(
                q_data, q_random, q_current, q_next, logp_current, logp_next,
                mc_returns if cfg.calibrated else None, self.action_dim, cfg.cql_temperature,
            )
            metrics.update(cql_metrics)
            if cfg.cql_lagrange:
                cql_alpha = self.log_cql_alpha.detach().exp().clamp(0.0, 1e6)
                penalty = (cql_alpha * (gap - cfg.cql_target_action_gap)).sum()
            else:
                cql_alpha = torch.tensor(cfg.cql_alpha)
                penalty = cfg.cql_alpha * gap.sum()
            critic_loss = loss_td + penalty
        self._check_finite(critic_loss, "critic_loss")
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        metrics["critic_grad_norm"] = _grad_norm(self.critic.parameters())
        metrics["encoder_grad_norm"] = _grad_norm(self.encoder.parameters())
        self.critic_optimizer.step()
        if cfg.conservative and cfg.cql_lagrange:
            cql_alpha_loss = -(self.log_cql_alpha.exp() * (gap.detach() - cfg.cql_target_action_gap)).sum()
            self.cql_alpha_optimizer.zero_grad(set_to_none=True)
            cql_alpha_loss.backward()
            self.cql_alpha_optimizer.step()

        # The critic is only read here; its encoder gets no gradient from the actor.
        mean, log_std = self.actor(actor_features)
        policy_actions, logp = sample_tanh_gaussian(mean, log_std, 1)
        entropy_alpha = self.log_entropy_alpha.exp().detach()
        if self.num_updates < cfg.bc_steps:
            logp_data = tanh_gaussian_log_prob(mean, log_std, actions)
            actor_loss, actor_metrics = bc_actor_loss(logp, logp_data, entropy_alpha)
        else:
            self.critic.requires_grad_(False)
            q_policy = self.critic(features.detach(), policy_actions).min(dim=0).values
            actor_loss, actor_metrics = sac_actor_loss(logp, q_policy, entropy_alpha)
            if cfg.actor_bc_weight > 0:
                regularizer, bc_metrics = bc_regularizer(mean, actions, q_policy, cfg.actor_bc_weight)
                actor_loss = actor_loss + regularizer
                actor_metrics.update(bc_metrics)
            self.critic.requires_grad_(True)
        self._check_finite(actor_loss, "actor_loss")
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        metrics["actor_grad_norm"] = _grad_norm(self.actor.parameters())
        if self.actor_encoder is not None:
            metrics["actor_encoder_grad_norm"] = _grad_norm(self.actor_encoder.parameters())
        self.actor_optimizer.step()
        alpha_loss, alpha_metrics = entropy_alpha_loss(self.log_entropy_alpha, logp, self.target_entropy)
        if self.num_updates >= cfg.bc_steps:
            # The coefficient is tuned for the RL actor loss; during the BC warm start it would
            # only drift away from the value the RL phase starts with.
            self.entropy_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.entropy_optimizer.step()
        soft_update(self.target_critic, self.critic, cfg.tau)
        self.num_updates += 1

        metrics.update(actor_metrics)
        metrics.update(alpha_metrics)
        metrics.update(
            critic_loss=critic_loss.item(),
            cql_loss=penalty.item(),
            cql_alpha=float(cql_alpha),
            q_data=q_data.mean().item(),
            td_target=td_target.mean().item(),
            mc_returns=mc_returns.mean().item(),
        )
        return metrics

    def _check_finite(self, loss: torch.Tensor, name: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite {name} ({loss.item()}) at update {self.num_updates}")

    # ----------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        """Weights, optimiser states and counters (tensors and plain Python values only)."""
        return {
            "model": self.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "entropy_optimizer": self.entropy_optimizer.state_dict(),
            "cql_alpha_optimizer": self.cql_alpha_optimizer.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.entropy_optimizer.load_state_dict(state["entropy_optimizer"])
        self.cql_alpha_optimizer.load_state_dict(state["cql_alpha_optimizer"])
        self.num_updates = int(state["num_updates"])
