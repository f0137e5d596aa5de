"""Actor and critic heads shared by the agents (they read encoder features)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class EnsembleCritic(nn.Module):
    """``num_critics`` Q-networks (2 hidden layers) evaluated as batched matmuls.

    ``forward(features (B, F), actions (B, N, A)) -> (num_critics, B, N)``. The state part of
    the first layer is computed once per state and shared by all N actions: with ~30 sampled
    actions per state in a CQL update this removes most of the first layer's work.
    With ``layer_norm`` each hidden layer's pre-activations are normalised (no learned scale),
    which bounds how far Q can extrapolate to unfamiliar inputs (RLPD's critic).
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden_dim: int = 256, num_critics: int = 2,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.num_critics = num_critics
        self.layer_norm = layer_norm

        def layer(fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
            bound = 1.0 / math.sqrt(fan_in)
            weight = torch.empty(num_critics, fan_in, fan_out).uniform_(-bound, bound)
            bias = torch.empty(num_critics, 1, fan_out).uniform_(-bound, bound)
            return nn.Parameter(weight), nn.Parameter(bias)

        first_weight, self.b1 = layer(feature_dim + action_dim, hidden_dim)
        self.w1_state = nn.Parameter(first_weight[:, :feature_dim].clone())
        self.w1_action = nn.Parameter(first_weight[:, feature_dim:].clone())
        self.w2, self.b2 = layer(hidden_dim, hidden_dim)
        self.w3, self.b3 = layer(hidden_dim, 1)

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        batch, num_actions, _ = actions.shape
        state_part = torch.matmul(features.unsqueeze(0), self.w1_state) + self.b1  # (C, B, H)
        action_part = torch.matmul(actions.reshape(1, batch * num_actions, -1), self.w1_action)  # (C, B*N, H)
        # in-place ReLUs: the pre-activations are not needed for any gradient (one pass and one
        # (C, B*N, H) buffer less per layer)
        hidden = F.relu_(self._normalise(action_part.view(self.num_critics, batch, num_actions, -1) + state_part.unsqueeze(2)))
        hidden = F.relu_(self._normalise(torch.baddbmm(self.b2, hidden.view(self.num_critics, batch * num_actions, -1), self.w2)))
        return torch.baddbmm(self.b3, hidden, self.w3).view(self.num_critics, batch, num_actions)

    def _normalise(self, pre_activation: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(pre_activation, pre_activation.shape[-1:]) if self.layer_norm else pre_activation


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two hidden ReLU layers: the shape of every actor and value head."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class TanhGaussianActor(nn.Module):
    """Gaussian policy squashed by tanh into [-1, 1]; the MLP runs once per state however
    many actions are sampled from it."""

    def __init__(self, feature_dim: int, action_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden_dim, 2 * action_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(features).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def deterministic(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(features)[0])


class DeterministicActor(nn.Module):
    """A deterministic policy: tanh of an MLP (TD3's actor)."""

    def __init__(self, feature_dim: int, action_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden_dim, action_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(features))

    def deterministic(self, features: torch.Tensor) -> torch.Tensor:
        return self(features)


class ValueNetwork(nn.Module):
    """State value V(s) on encoder features: (B, F) -> (B,)."""

    def __init__(self, feature_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def _tanh_log_det(pre_tanh: torch.Tensor) -> torch.Tensor:
    """log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable, summed."""
    return (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


def sample_tanh_gaussian(mean: torch.Tensor, log_std: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` reparameterised tanh-Gaussian samples per row of ``mean``/``log_std``
    (B, A): actions (B, N, A) and their log-probabilities (B, N)."""
    mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
    noise = torch.randn(mean.shape[0], num_samples, mean.shape[-1], device=mean.device)
    pre_tanh = mean + log_std.exp() * noise
    gaussian = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return torch.tanh(pre_tanh), gaussian - _tanh_log_det(pre_tanh)


def tanh_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Log-probability (B,) of given actions (B, A) in [-1, 1]; actions on the boundary
    (saturated expert commands) are pulled in by ``eps`` to keep atanh finite."""
    pre_tanh = torch.atanh(actions.clamp(-1.0 + eps, 1.0 - eps))
    gaussian = (-0.5 * ((pre_tanh - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return gaussian - _tanh_log_det(pre_tanh)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for target_param, param in zip(target.parameters(), source.parameters()):
            target_param.lerp_(param, tau)
