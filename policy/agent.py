"""The one interface every algorithm's agent has, and the parts they share.

Entry points, checkpoints, evaluation and export only use this interface:

- ``act(obs, deterministic)``: actions in [-1, 1] for a batch of raw observations;
- ``q_values(obs, actions=None)``: min over the critic heads of Q(s, a), a defaulting to the
  deterministic policy action;
- ``update(batch) -> metrics``: one gradient update on a :class:`~datasets.replay.Batch`;
- ``training_state()`` / ``load_training_state(state)``: weights, optimiser states, counters;
- ``evaluated_policy()``: the (encoder, actor) pair that deterministic acting uses and export
  traces: the trained ones, or their moving average (``policy_average_tau``).

An algorithm builds its critic (:meth:`Agent.make_critic`: an ensemble of Q heads on
``self.encoder``'s features, and its target), ``self.actor`` and its optimisers
(``self.optimizers``, by name), and writes ``learn``: the gradient steps of one update on a batch
already on the device. The base moves the batch, counts the updates and moves the policy average.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from datasets.replay import Batch, ObsSpec, is_image
from perception.encoders import EncoderConfig, ObservationEncoder
from policy.networks import EnsembleCritic, soft_update


@dataclass
class AlgoConfig:
    """Fields every algorithm has; each algorithm's config extends it with its own."""

    name: str = "???"
    gamma: float = 0.99
    n_step: int = 1  # TD targets over n dataset steps (the replay builds them); 1 = the reference
    hidden_dim: int = 256
    tau: float = 5e-3  # soft update of the target networks
    critic_layer_norm: bool = False  # LayerNorm in the critic's hidden layers
    # Rate of an exponential moving average of the policy's weights (its encoder and actor),
    # moved after every update like a target network; the average is the policy that is
    # evaluated and exported, the trained weights keep exploring. 0: no average.
    policy_average_tau: float = 0.0
    # Observation keys only the critic reads: simulation state a robot lacks (e.g. ``object``,
    # the cube's pose). They are loaded from the data besides ``dataset.obs_keys``; the actor
    # then has its own encoder of the other keys, trained by the actor's loss, and the exported
    # policy never takes them. Empty: the actor and critic read the same observations.
    privileged_keys: list[str] = field(default_factory=list)
    # False: the critic reads only the low-dimensional observations (with privileged_keys, the
    # simulation state), not the camera: a much cheaper critic; the actor encodes the images.
    critic_reads_images: bool = True


# The settings of a trained agent that fine-tuning may change (algo.NAME=VALUE beside a
# checkpoint); the others shaped what the checkpoint's networks learned. cql_alpha=0 online
# fine-tunes a CQL or Cal-QL checkpoint without the conservative penalty (WSRL's recipe).
ONLINE_SETTINGS = ("policy_average_tau", "actor_lr", "actor_bc_weight", "actor_bc_source", "cql_alpha", "alpha_lr",
                   "target_entropy")


class NonFiniteLossError(RuntimeError):
    pass


# What losses and updates report: scalar tensors, left on the training device until a log row
# averages them (reading each back per update would synchronise the device every time).
Metrics = dict[str, torch.Tensor]


def policy_obs_spec(obs_spec: ObsSpec, privileged_keys: list[str]) -> ObsSpec:
    """The observations the policy reads: ``obs_spec`` without the critic's privileged keys,
    which must all be in it and leave at least one key."""
    missing = sorted(set(privileged_keys) - set(obs_spec))
    if missing:
        raise ValueError(f"algo.privileged_keys {missing} are not observations of the data or checkpoint "
                         f"(it has {sorted(obs_spec)}); drop them or use data that records them")
    policy_spec = {key: spec for key, spec in obs_spec.items() if key not in privileged_keys}
    if not policy_spec:
        raise ValueError("algo.privileged_keys leaves the policy no observation; keep at least one key for the actor")
    return policy_spec


def critic_obs_spec(obs_spec: ObsSpec, reads_images: bool) -> ObsSpec:
    """The observations the critic reads: all of them, or (``reads_images`` false) the
    low-dimensional ones, of which there must be one."""
    if reads_images:
        return obs_spec
    critic_spec = {key: spec for key, spec in obs_spec.items() if not is_image(spec)}
    if not critic_spec:
        raise ValueError(f"algo.critic_reads_images=false leaves the critic no observation ({sorted(obs_spec)} are all "
                         f"images); add low-dimensional keys (e.g. algo.privileged_keys=[object]) or read the images")
    return critic_spec


def loaded_obs_keys(policy_keys: list[str], config: AlgoConfig) -> list[str]:
    """The observation keys to load from data: the policy's (``dataset.obs_keys``) and then the
    critic's privileged keys."""
    return list(policy_keys) + [key for key in config.privileged_keys if key not in policy_keys]


def to_torch(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in obs.items()}


def grad_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def td_loss(q_data: torch.Tensor, td_target: torch.Tensor,
            online: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Sum over Q heads of the mean squared TD error. ``q_data``: (C, B), ``td_target``: (B,).

    With an ``online`` mask (B,), the metrics split the error into offline and online
    transitions (does the critic fit the new data worse than the old?); a kind of row that the
    batch lacks gets NaN, which the logged averages skip.
    """
    squared = (q_data - td_target.unsqueeze(0)) ** 2
    per_head = squared.mean(dim=1)
    metrics = {"td_loss": per_head.mean().detach()}
    if online is not None:
        per_row = squared.detach().mean(dim=0)
        online_rows = online.sum()
        metrics["td_loss_online"] = (per_row * online).sum() / online_rows
        metrics["td_loss_offline"] = (per_row * (1 - online)).sum() / (len(online) - online_rows)
    return per_head.sum(), metrics


class NonFiniteLosses:
    """Which losses were NaN or infinite since the last check, kept on the device: reading a
    flag back at every update would synchronise the device each time."""

    def __init__(self) -> None:
        self.flags: dict[str, torch.Tensor] = {}
        self.checked_updates = 0  # updates covered by earlier checks

    def record(self, loss_name: str, loss: torch.Tensor) -> None:
        nonfinite = ~torch.isfinite(loss.detach())
        earlier = self.flags.get(loss_name)
        self.flags[loss_name] = nonfinite if earlier is None else earlier | nonfinite

    def check(self, num_updates: int) -> None:
        """Raise :class:`NonFiniteLossError` naming the losses and the range of updates (counted
        from 1) if any was non-finite since the last check; the next check covers later ones."""
        first, last = self.checked_updates + 1, num_updates
        names = list(self.flags)
        flags = torch.stack([self.flags[name] for name in names]).tolist() if names else []
        self.flags.clear()
        self.checked_updates = num_updates
        bad = [name for name, flag in zip(names, flags) if flag]
        if bad:
            span = f"update {last}" if first == last else f"updates {first} to {last}"
            raise NonFiniteLossError(f"non-finite {', '.join(bad)} in {span}")


class Agent(nn.Module):
    """Base of every agent: the shared encoder, acting, Q queries, checkpoint state."""

    actor: nn.Module
    critic: nn.Module
    # Whether the algorithm's actor can read an encoder of its own (``algo.privileged_keys``)
    supports_privileged_keys = False

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: AlgoConfig, encoder_config: EncoderConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.check_settings(config)
        self.action_dim = action_dim
        self.device = torch.device(device)
        # Trained by the critic's losses; actors and value heads read its features detached,
        # unless the actor reads other observations than the critic (its own encoder).
        critic_spec = critic_obs_spec(obs_spec, config.critic_reads_images)
        policy_spec = policy_obs_spec(obs_spec, config.privileged_keys)
        self.encoder = ObservationEncoder(critic_spec, encoder_config)
        self.actor_encoder: ObservationEncoder | None = None
        if policy_spec != critic_spec:
            self.actor_encoder = ObservationEncoder(policy_spec, encoder_config)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.num_updates = 0
        self.nonfinite = NonFiniteLosses()
        # The moving average of the policy (encoder and actor), made at the first update that
        # moves it; never trained, so it holds no gradients.
        self.policy_average: nn.ModuleDict | None = None
        # Scale of the exploration noise when acting online (1: the policy's own)
        self.exploration_scale = 1.0
        self._cuda_graphs = False

    # --------------------------------------------------------------------------- settings
    @classmethod
    def check_settings(cls, config: AlgoConfig) -> None:
        """Raise ValueError naming the first setting of ``config`` out of its range (before any
        agent or data exists: the registry's check_config calls it); an algorithm with settings
        of its own extends it."""
        if config.n_step < 1:
            raise ValueError(f"algo.n_step must be >= 1, got {config.n_step}")
        if not 0.0 < config.gamma <= 1.0:
            raise ValueError(f"algo.gamma must be in (0, 1], got {config.gamma}")
        if not 0.0 <= config.policy_average_tau <= 1.0:
            raise ValueError(f"algo.policy_average_tau must be in [0, 1], got {config.policy_average_tau}")
        if not 0.0 < config.tau <= 1.0:  # 0 would leave the target networks where they started
            raise ValueError(f"algo.tau must be in (0, 1], got {config.tau}")
        if config.hidden_dim < 1:
            raise ValueError(f"algo.hidden_dim must be positive, got {config.hidden_dim}")
        if (config.privileged_keys or not config.critic_reads_images) and not cls.supports_privileged_keys:
            raise ValueError(f"algo.privileged_keys and algo.critic_reads_images=false are not supported by algo "
                             f"{config.name!r} (its actor reads the critic's features); use algo=calql, cql or sac")

    def change_setting(self, name: str, value: Any) -> None:
        """Change one setting of the algorithm's config (fine-tuning's online options); the config,
        and so the run's record and checkpoints, holds the new value. A setting the algorithm
        does not have, or a value out of range, is refused and nothing changes."""
        if not hasattr(self.config, name):
            raise ValueError(f"{name} is not a setting of algo {self.config.name!r}; drop it for this algorithm")
        before = getattr(self.config, name)
        if isinstance(before, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # 0 on a command line is the float setting's 0.0
        setattr(self.config, name, value)
        try:
            self.check_settings(self.config)
        except ValueError:
            setattr(self.config, name, before)
            raise
        if name == "policy_average_tau" and value == 0:
            # no average from here on: the trained weights are evaluated and exported, not an
            # earlier stage's average frozen where that stage left it
            self.policy_average = None

    # ----------------------------------------------------------------------------- acting
    @property
    def policy_encoder(self) -> ObservationEncoder:
        """The encoder the actor reads (its own where the algorithm gives it one)."""
        return self.actor_encoder if self.actor_encoder is not None else self.encoder

    @property
    def policy_obs_keys(self) -> list[str]:
        """The observation keys the policy reads (sorted): those the exported policy takes."""
        return sorted(self.policy_encoder.image_keys + self.policy_encoder.lowdim_keys)

    def evaluated_policy(self, trained: bool = False) -> tuple[ObservationEncoder, nn.Module]:
        """The encoder and actor of the deterministic policy: the moving average where there is
        one (unless ``trained``), else the trained weights."""
        if self.policy_average is not None and not trained:
            return self.policy_average["encoder"], self.policy_average["actor"]
        return self.policy_encoder, self.actor

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True, trained: bool = False) -> np.ndarray:
        """Actions for a batch of observations (dict of (B, ...) arrays), in [-1, 1]:
        the evaluated policy's (``trained``: the trained weights'), or exploration actions."""
        obs_t = to_torch(obs, self.device)
        if deterministic:
            encoder, actor = self.evaluated_policy(trained)
            actions = actor.deterministic(encoder(obs_t))
        else:
            actions = self.explore(self.policy_encoder(obs_t))
        return actions.cpu().numpy()

    def explore(self, features: torch.Tensor) -> torch.Tensor:
        """Exploration actions (B, A): a sample of the stochastic policy, its standard deviation
        times ``exploration_scale`` (0: the mean action)."""
        mean, log_std = self.actor(features)
        return torch.tanh(mean + self.exploration_scale * log_std.exp() * torch.randn_like(mean))

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
        for module in self.modules():
            if isinstance(module, ObservationEncoder):
                module.set_lowdim_normalization(stats)

    def set_actor_lr(self, lr: float) -> None:
        """Change the actor's learning rate (its optimiser keeps its moments); the config
        records it, so a checkpoint says what the actor was trained with."""
        for group in self.optimizers["actor"].param_groups:
            group["lr"] = lr
        self.config.actor_lr = lr

    @property
    def _fused_adam(self) -> bool | None:
        return True if self.device.type == "cuda" else None

    def adam(self, parameters: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
        """Adam for parameters on this agent's device; on CUDA its fused kernel (one launch
        for all of them instead of several per tensor: updates there are launch-bound)."""
        return torch.optim.Adam(parameters, lr=lr, fused=self._fused_adam)

    def compile_networks(self, cuda_graphs: bool = False) -> None:
        """Run every network's forward and backward pass through ``torch.compile`` (fused
        kernels; the optimiser steps and the update's Python stay eager). Weights, state dicts
        and checkpoints are those of the eager networks. ``cuda_graphs``: on CUDA each compiled
        network replays as a CUDA graph per input shape (torch's ``reduce-overhead`` mode: one
        launch instead of dozens, what a small network's update is bound by)."""
        self._cuda_graphs = cuda_graphs
        for module in self.children():
            module.compile(mode="reduce-overhead" if cuda_graphs else None, dynamic=False)

    def set_encoder_bf16(self, enabled: bool) -> None:
        """Run the image trunks of every encoder under bfloat16 autocast (their features, the
        heads, losses and optimiser states stay float32)."""
        for module in self.modules():
            if isinstance(module, ObservationEncoder):
                module.bf16 = enabled

    def freeze_encoders(self) -> None:
        """Stop training the observation encoder(s): no gradient reaches them (nor is computed
        through them), so their optimisers skip them and their features stay as they are."""
        for module in (self.encoder, self.actor_encoder):
            if module is not None:
                module.requires_grad_(False)

    # --------------------------------------------------------------------------- learning
    def update(self, batch: Batch) -> Metrics:
        """One update: the batch to the device, the algorithm's gradient steps, then the policy
        average follows."""
        averaging = self.config.policy_average_tau > 0
        if averaging and self.policy_average is None:
            self._make_policy_average()  # from the policy before this update
        if self._cuda_graphs:
            # A new training step: outputs of the previous step's graph replays may be reused
            torch.compiler.cudagraph_mark_step_begin()
        metrics = self.learn(batch.to_torch(self.device))
        self.num_updates += 1
        if averaging:
            soft_update(self.policy_average["encoder"], self.policy_encoder, self.config.policy_average_tau)
            soft_update(self.policy_average["actor"], self.actor, self.config.policy_average_tau)
        return metrics

    def learn(self, batch: Batch) -> Metrics:
        """The algorithm's gradient steps on one batch of tensors on the device; returns its
        metrics. ``self.num_updates`` counts the updates before this one."""
        raise NotImplementedError

    def make_critic(self) -> None:
        """The Q ensemble on the encoder's features (``self.critic``) and its target copy."""
        self.critic = EnsembleCritic(self.encoder.output_dim, self.action_dim, self.config.hidden_dim,
                                     layer_norm=self.config.critic_layer_norm)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)

    def critic_optimizer(self, lr: float) -> torch.optim.Adam:
        """Adam over the encoder and the critic: the critic's losses train the encoder."""
        return self.adam([*self.encoder.parameters(), *self.critic.parameters()], lr=lr)

    def step_critic(self, loss: torch.Tensor) -> Metrics:
        """One step of the critic's optimiser; the critic's and the encoder's gradient norms."""
        return self.step("critic", loss, "critic_loss", {"critic": self.critic.parameters(), "encoder": self.encoder.parameters()})

    def _make_policy_average(self) -> None:
        average = nn.ModuleDict({"encoder": copy.deepcopy(self.policy_encoder), "actor": copy.deepcopy(self.actor)})
        self.policy_average = average.requires_grad_(False).eval()

    def step(self, optimizer_name: str, loss: torch.Tensor, loss_name: str,
             grad_norms: dict[str, Iterable[nn.Parameter]] | None = None) -> Metrics:
        """One gradient step of the named optimiser on ``loss``; returns the gradient norms of the
        named parameter groups in ``grad_norms`` (as ``<name>_grad_norm``). Whether the loss was
        finite is recorded on the device, for :meth:`raise_if_nonfinite`."""
        self.nonfinite.record(loss_name, loss)
        optimizer = self.optimizers[optimizer_name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = {f"{name}_grad_norm": grad_norm(parameters) for name, parameters in (grad_norms or {}).items()}
        optimizer.step()
        return norms

    def raise_if_nonfinite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss was NaN or infinite in an update since the
        last check (:class:`NonFiniteLosses`). The loops call it before they evaluate, log or save,
        so that a checkpoint never holds damaged weights."""
        self.nonfinite.check(self.num_updates)

    # ----------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        """Weights, optimiser states and counters (tensors and plain Python values only)."""
        return {
            "model": self.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "num_updates": self.num_updates,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        if self.policy_average is None and any(key.startswith("policy_average.") for key in state["model"]):
            self._make_policy_average()  # its weights come with the state
        self.load_state_dict(state["model"])
        if set(state["optimizers"]) != set(self.optimizers):
            raise ValueError(f"optimiser states {sorted(state['optimizers'])} do not match this agent's {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            for group in optimizer.param_groups:  # the kernel suits this device, not the saving one
                group["fused"] = self._fused_adam
        self.num_updates = self.nonfinite.checked_updates = int(state["num_updates"])
