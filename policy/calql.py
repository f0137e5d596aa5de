"""Cal-QL: CQL whose conservative penalty is bounded below by Monte-Carlo returns.

This file is the SAC family: ``algo=calql`` (the default), ``algo=cql`` (no MC bound) and
``algo=sac`` (no conservative penalty, entropy in the backup: online SAC). What an algorithm
does follows from its name alone: its config class (``SACConfig``, ``CQLConfig``,
``CalQLConfig``) has the fields it uses and no switch that could contradict the name. The
agents are SAC, CQL as SAC with a conservative critic loss, and Cal-QL as CQL with its bound.

Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online
Fine-Tuning" (NeurIPS 2023). The only change to CQL: inside the CQL regulariser, Q-values of
actions sampled from the current policy (at s and at s') are replaced by
``max(Q(s, a_pi), mc_return(s))``; without it (``algo=cql``) this is plain CQL.

Critic, per Q head i: a TD loss to ``r + gamma (1 - terminal) max_k min_j Qtarg_j(s', a'_k)``
(max backup over k policy samples, no entropy term) plus
``alpha * mean(temp * logsumexp([Q_rand - log 0.5^d, Q_next - logpi_next, Q_cur - logpi_cur]
/ temp) - Q_i(s, a_data))`` over n samples of each kind, all scored at s. Actor: SAC with
automatic entropy tuning. The critic's gradients train the image encoder; the actor reads
detached features. Each state is encoded once per update and reused by every sampled action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from datasets.replay import Batch, ObsSpec
from perception.encoders import EncoderConfig, ObservationEncoder
from policy.agent import Agent, AlgoConfig, Metrics, td_loss
from policy.networks import TanhGaussianActor, sample_tanh_gaussian, soft_update, tanh_gaussian_log_prob


BC_SOURCES = ("all", "offline")


@dataclass
class SACConfig(AlgoConfig):
    name: str = "sac"
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4  # the entropy coefficient's; 0 holds it where it is
    backup_num_actions: int = 1  # max target backup over this many policy samples; 1 = plain
    entropy_backup: bool = True  # subtract alpha * logpi(a'|s') in the TD target (SAC)
    init_entropy_alpha: float = 1.0
    target_entropy: Optional[float] = None  # default: -action_dim
    # Behaviour-cloning warm start of the actor for the first bc_steps updates (CQL's
    # "policy_eval_start"): the actor loss is alpha * logpi(a~pi) - logpi(a_data).
    bc_steps: int = 0
    # After the warm start, add w * mean|Q| * |tanh(mean) - a_data|^2 to the actor loss (TD3+BC's
    # constraint, scale-free in Q; TD3+BC's lambda 2.5 is w = 0.4). 0 is the reference.
    actor_bc_weight: float = 0.0
    # Which rows the BC term imitates: all of the batch, or only the offline data's (online
    # rows hold the policy's own exploration actions, which anchor it to itself).
    actor_bc_source: str = "all"  # all | offline
    # The actor gets its own encoder, trained by the actor's loss (robomimic's layout), instead
    # of reading the critic's features detached (DrQ's). Non-empty privileged_keys give it one
    # whatever this says.
    separate_actor_encoder: bool = False


@dataclass
class CQLConfig(SACConfig):
    name: str = "cql"
    backup_num_actions: int = 10
    entropy_backup: bool = False
    cql_alpha: float = 5.0
    cql_num_actions: int = 10
    cql_temperature: float = 1.0
    cql_lagrange: bool = False  # adapt alpha so the CQL gap approaches cql_target_action_gap
    cql_target_action_gap: float = 0.8


@dataclass
class CalQLConfig(CQLConfig):
    """CQL's fields; the name alone switches the Monte-Carlo lower bound on."""

    name: str = "calql"


def cql_penalty(
    q_data: torch.Tensor,
    q_random: torch.Tensor,
    q_current: torch.Tensor,
    q_next: torch.Tensor,
    logp_current: torch.Tensor,
    logp_next: torch.Tensor,
    mc_returns: torch.Tensor,
    calibrated: bool,
    action_dim: int,
    temperature: float,
) -> tuple[torch.Tensor, Metrics]:
    """Per-head CQL gap ``mean(temp * logsumexp(ood / temp) - Q(s, a_data))``, shape (C,).

    Shapes: ``q_data`` (C, B); ``q_random``/``q_current``/``q_next`` (C, B, n);
    ``logp_*`` (B, n); ``mc_returns`` (B,). ``calibrated`` is Cal-QL: the two policy-action
    terms are bounded below by the MC return; random and dataset actions are not. The share of
    policy-action values below the MC return (``bound_rate``, the share the bound lifts) is
    reported either way: for CQL it says whether its critic is below the behaviour's returns.
    """
    bound = mc_returns.view(1, -1, 1)
    metrics: Metrics = {"bound_rate": torch.cat([q_current < bound, q_next < bound], dim=-1).float().mean().detach()}
    if calibrated:
        q_current = torch.maximum(q_current, bound)
        q_next = torch.maximum(q_next, bound)
    log_uniform_density = action_dim * math.log(0.5)
    ood = torch.cat(
        [q_random - log_uniform_density, q_next - logp_next.unsqueeze(0), q_current - logp_current.unsqueeze(0)], dim=-1
    )
    ood_value = temperature * torch.logsumexp(ood / temperature, dim=-1)  # (C, B)
    gap = (ood_value - q_data).mean(dim=1)
    metrics.update(
        cql_gap=gap.mean().detach(),
        cql_ood_value=ood_value.mean().detach(),
        q_random=q_random.mean().detach(),
        q_current=q_current.mean().detach(),
        q_next=q_next.mean().detach(),
    )
    return gap, metrics


def sac_actor_loss(logp: torch.Tensor, q_min: torch.Tensor, entropy_alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    loss = (entropy_alpha * logp - q_min).mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -logp.mean().detach(), "q_policy": q_min.mean().detach()}


def bc_regularizer(mean: torch.Tensor, actions: torch.Tensor, q_min: torch.Tensor, weight: float,
                   rows: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """``weight * mean|Q| * mean ||tanh(mean) - a_data||^2``: ties the actor to the data's actions in
    proportion to the Q scale, so the weight does not depend on the reward scale. ``rows`` (a
    boolean mask) restricts the squared error to those rows, e.g. the offline data's; a batch
    without any such row uses all of its rows."""
    per_row = ((torch.tanh(mean) - actions) ** 2).sum(-1)
    squared_error = per_row.mean()
    if rows is not None:  # decided on the device: no read-back of the mask
        count = rows.sum()
        squared_error = torch.where(count > 0, (per_row * rows).sum() / count.clamp(min=1), squared_error)
    loss = weight * q_min.abs().mean().detach() * squared_error
    return loss, {"bc_mse": squared_error.detach(), "bc_loss": loss.detach()}


def bc_actor_loss(logp: torch.Tensor, logp_data: torch.Tensor, entropy_alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    loss = (entropy_alpha * logp).mean() - logp_data.mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -logp.mean().detach(), "bc_log_prob": logp_data.mean().detach()}


def entropy_alpha_loss(log_alpha: torch.Tensor, logp: torch.Tensor, target_entropy: float) -> tuple[torch.Tensor, Metrics]:
    loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
    return loss, {"entropy_alpha": log_alpha.exp().detach()}


Policy = tuple[torch.Tensor, torch.Tensor]  # the actor's (mean, log std) at a batch of states


class SACAgent(Agent):
    """Online SAC (``algo=sac``), and the base of CQL and Cal-QL: one update reads encode ->
    TD target -> critic step -> actor (and entropy) step on detached features -> soft update."""

    supports_privileged_keys = True

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: SACConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(obs_spec, action_dim, config, encoder_config, device)
        if config.separate_actor_encoder and self.actor_encoder is None:
            self.actor_encoder = ObservationEncoder(obs_spec, encoder_config)
        self.make_critic()
        self.actor = TanhGaussianActor(self.policy_encoder.output_dim, action_dim, config.hidden_dim)
        self.log_entropy_alpha = nn.Parameter(torch.tensor(math.log(config.init_entropy_alpha)))
        self.to(self.device)
        actor_encoder_parameters = list(self.actor_encoder.parameters()) if self.actor_encoder else []
        self.optimizers = {
            "critic": self.critic_optimizer(config.critic_lr),
            "actor": self.adam([*self.actor.parameters(), *actor_encoder_parameters], lr=config.actor_lr),
            "entropy_alpha": self.adam([self.log_entropy_alpha], lr=config.alpha_lr),
        }

    @classmethod
    def check_settings(cls, config: SACConfig) -> None:
        super().check_settings(config)
        if config.actor_bc_weight < 0:
            raise ValueError(f"algo.actor_bc_weight must be >= 0, got {config.actor_bc_weight}")
        if config.actor_bc_source not in BC_SOURCES:
            raise ValueError(f"algo.actor_bc_source must be one of {', '.join(BC_SOURCES)}, got {config.actor_bc_source!r}")
        if not config.alpha_lr >= 0:
            raise ValueError(f"algo.alpha_lr must be >= 0 (0 holds the entropy coefficient), got {config.alpha_lr}")

    @property
    def target_entropy(self) -> float:
        """The entropy the coefficient's tuning aims at: the config's, else -action_dim."""
        return self.config.target_entropy if self.config.target_entropy is not None else -float(self.action_dim)

    def change_setting(self, name: str, value: Any) -> None:
        super().change_setting(name, value)
        if name == "alpha_lr":  # the optimiser keeps its moments
            for group in self.optimizers["entropy_alpha"].param_groups:
                group["lr"] = self.config.alpha_lr

    def learn(self, batch: Batch) -> Metrics:
        features, actor_features = self._encode(batch.obs)
        with torch.no_grad():
            next_features, next_actor_features = self._encode(batch.next_obs)
            next_policy = self.actor(next_actor_features)
            td_target = self._td_target(batch, next_features, next_policy)
        critic_loss, q_data, metrics = self.critic_loss(batch, features, actor_features, next_policy, td_target)
        metrics.update(self.step_critic(critic_loss))
        metrics.update(self._policy_step(batch, features, actor_features))
        soft_update(self.target_critic, self.critic, self.config.tau)
        metrics.update(critic_loss=critic_loss.detach(), q_data=q_data.mean().detach(), td_target=td_target.mean().detach(),
                       mc_returns=batch.mc_returns.mean().detach())
        return metrics

    def _encode(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented features for the critic and for the actor: the critic's detached, or the
        actor's own encoder's."""
        features = self.encoder(obs, augment=True)
        return features, self.actor_encoder(obs, augment=True) if self.actor_encoder else features.detach()

    def _td_target(self, batch: Batch, next_features: torch.Tensor, next_policy: Policy) -> torch.Tensor:
        """``r + discount (1 - terminal) max_k min_j Qtarg_j(s', a'_k)`` over ``backup_num_actions``
        policy samples, minus the entropy term where ``entropy_backup``."""
        cfg = self.config
        backup_actions, backup_logp = sample_tanh_gaussian(*next_policy, cfg.backup_num_actions)
        backup_q = self.target_critic(next_features, backup_actions).min(dim=0).values
        if cfg.entropy_backup:
            backup_q = backup_q - self.log_entropy_alpha.exp() * backup_logp
        return batch.rewards + batch.discounts * (1.0 - batch.terminals) * backup_q.max(dim=1).values

    def critic_loss(self, batch: Batch, features: torch.Tensor, actor_features: torch.Tensor, next_policy: Policy,
                    td_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        """The critic's loss, Q(s, a_data) of every head (C, B), and metrics: SAC's is the TD loss."""
        q_data = self.critic(features, batch.actions.unsqueeze(1))[:, :, 0]
        loss, metrics = td_loss(q_data, td_target, batch.online)
        metrics.update(cql_loss=torch.zeros((), device=self.device), cql_alpha=torch.zeros((), device=self.device))
        return loss, q_data, metrics

    def _policy_step(self, batch: Batch, features: torch.Tensor, actor_features: torch.Tensor) -> Metrics:
        """The actor's step (behaviour cloning during the warm start, then SAC with the optional
        BC term), then the entropy coefficient's (not during the warm start: it would only drift
        from the value the RL phase starts with)."""
        mean, log_std = self.actor(actor_features)
        policy_actions, logp = sample_tanh_gaussian(mean, log_std, 1)
        entropy_alpha = self.log_entropy_alpha.exp().detach()
        warm_start = self.num_updates < self.config.bc_steps
        if warm_start:
            actor_loss, metrics = bc_actor_loss(logp, tanh_gaussian_log_prob(mean, log_std, batch.actions), entropy_alpha)
        else:
            actor_loss, metrics = self._rl_actor_loss(batch, features, mean, policy_actions, logp, entropy_alpha)
        norms = {"actor": self.actor.parameters()}
        if self.actor_encoder is not None:
            norms["actor_encoder"] = self.actor_encoder.parameters()
        metrics.update(self.step("actor", actor_loss, "actor_loss", norms))
        alpha_loss, alpha_metrics = entropy_alpha_loss(self.log_entropy_alpha, logp, self.target_entropy)
        if not warm_start:
            self.step("entropy_alpha", alpha_loss, "entropy_alpha_loss")
        metrics.update(alpha_metrics)
        return metrics

    def _rl_actor_loss(self, batch: Batch, features: torch.Tensor, mean: torch.Tensor, policy_actions: torch.Tensor,
                       logp: torch.Tensor, entropy_alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """SAC's actor loss on the critic's detached features (the critic is only read: no
        gradient reaches it or its encoder), plus the BC term where ``actor_bc_weight`` > 0."""
        cfg = self.config
        self.critic.requires_grad_(False)
        q_policy = self.critic(features.detach(), policy_actions).min(dim=0).values
        self.critic.requires_grad_(True)
        loss, metrics = sac_actor_loss(logp, q_policy, entropy_alpha)
        if cfg.actor_bc_weight > 0:
            rows = batch.online == 0 if cfg.actor_bc_source == "offline" else None
            regularizer, bc_metrics = bc_regularizer(mean, batch.actions, q_policy, cfg.actor_bc_weight, rows)
            bc_metrics["bc_share"] = (regularizer / (loss.abs() + regularizer + 1e-8)).detach()  # of the objective
            loss = loss + regularizer
            metrics.update(bc_metrics)
        return loss, metrics


class CQLAgent(SACAgent):
    """CQL (``algo=cql``): SAC's update with the conservative penalty in the critic's loss (and,
    by its config's defaults, a max backup without the entropy term)."""

    # Cal-QL's one difference: the penalty's policy-action values bounded below by the MC return
    calibrated = False

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: CQLConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(obs_spec, action_dim, config, encoder_config, device)
        self.log_cql_alpha = nn.Parameter(torch.tensor(math.log(max(config.cql_alpha, 1e-8)), device=self.device))
        if config.cql_lagrange:
            self.optimizers["cql_alpha"] = self.adam([self.log_cql_alpha], lr=config.critic_lr)

    @classmethod
    def check_settings(cls, config: CQLConfig) -> None:
        super().check_settings(config)
        if not config.cql_alpha >= 0:
            raise ValueError(f"algo.cql_alpha must be >= 0, got {config.cql_alpha}")

    def change_setting(self, name: str, value: Any) -> None:
        if name == "cql_alpha" and self.config.cql_lagrange:
            raise ValueError("algo.cql_alpha cannot change online for a checkpoint trained with algo.cql_lagrange=true: "
                             "its alpha is learned (it starts from cql_alpha only once); drop algo.cql_alpha")
        super().change_setting(name, value)

    def critic_loss(self, batch: Batch, features: torch.Tensor, actor_features: torch.Tensor, next_policy: Policy,
                    td_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        """TD loss plus alpha times the (calibrated) CQL gap, over the data's action and n random,
        n current-policy and n next-policy actions, all scored at s in one critic call. With
        alpha 0 (no Lagrange) the penalty is zero: SAC's TD loss alone, without the sampled
        actions' cost."""
        cfg, n = self.config, self.config.cql_num_actions
        if cfg.cql_alpha == 0 and not cfg.cql_lagrange:
            return super().critic_loss(batch, features, actor_features, next_policy, td_target)
        with torch.no_grad():
            random_actions = torch.empty(len(batch), n, self.action_dim, device=self.device).uniform_(-1.0, 1.0)
            current_actions, logp_current = sample_tanh_gaussian(*self.actor(actor_features.detach()), n)
            next_actions, logp_next = sample_tanh_gaussian(*next_policy, n)
        q_all = self.critic(features, torch.cat([batch.actions.unsqueeze(1), random_actions, current_actions, next_actions], dim=1))
        q_data = q_all[:, :, 0]
        q_random, q_current, q_next = q_all[:, :, 1:].split(n, dim=-1)
        loss_td, metrics = td_loss(q_data, td_target, batch.online)
        gap, cql_metrics = cql_penalty(q_data, q_random, q_current, q_next, logp_current, logp_next, batch.mc_returns,
                                       self.calibrated, self.action_dim, cfg.cql_temperature)
        metrics.update(cql_metrics)
        if cfg.cql_lagrange:
            cql_alpha = self.log_cql_alpha.detach().exp().clamp(0.0, 1e6)
            penalty = (cql_alpha * (gap - cfg.cql_target_action_gap)).sum()
            # alpha rises while the gap exceeds its target (its own optimiser; the critic's loss
            # above holds alpha's value from before this step)
            cql_alpha_loss = -(self.log_cql_alpha.exp() * (gap.detach() - cfg.cql_target_action_gap)).sum()
            self.step("cql_alpha", cql_alpha_loss, "cql_alpha_loss")
        else:
            cql_alpha = torch.full((), cfg.cql_alpha, device=self.device)
            penalty = cfg.cql_alpha * gap.sum()
        metrics.update(cql_loss=penalty.detach(), cql_alpha=cql_alpha.detach())
        return loss_td + penalty, q_data, metrics


class CalQLAgent(CQLAgent):
    """Cal-QL (``algo=calql``): CQL whose penalty bounds the policy actions' values below by the
    Monte-Carlo return of the data's behaviour."""

    calibrated = True
