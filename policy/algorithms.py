"""The algorithm registry: ``algo.name`` -> its config class and agent class.

Entry points, checkpoints and export build agents only through :func:`make_agent` and
:func:`algo_config`; none of them names a concrete agent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from datasets.replay import ObsSpec
from perception.encoders import EncoderConfig
from policy.agent import Agent, AlgoConfig
from policy.awac import AWACAgent, AWACConfig
from policy.calql import CalQLAgent, CalQLConfig, CQLAgent, CQLConfig, SACAgent, SACConfig
from policy.iql import IQLAgent, IQLConfig
from policy.td3bc import TD3BCAgent, TD3BCConfig


@dataclass(frozen=True)
class Algorithm:
    config: type[AlgoConfig]
    agent: type[Agent]


REGISTRY: dict[str, Algorithm] = {
    "calql": Algorithm(CalQLConfig, CalQLAgent),
    "cql": Algorithm(CQLConfig, CQLAgent),
    "sac": Algorithm(SACConfig, SACAgent),
    "iql": Algorithm(IQLConfig, IQLAgent),
    "awac": Algorithm(AWACConfig, AWACAgent),
    "td3bc": Algorithm(TD3BCConfig, TD3BCAgent),
}


def registered() -> str:
    return ", ".join(sorted(REGISTRY))


def lookup(name: str) -> Algorithm:
    if name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; registered: {registered()} (choose one with algo=NAME)")
    return REGISTRY[name]


def check_config(config: AlgoConfig) -> None:
    """``config`` must be exactly the config class of the algorithm it names: ``algo.name``
    cannot turn one algorithm's settings into another's."""
    algorithm = lookup(config.name)
    if type(config) is not algorithm.config:
        raise ValueError(f"algo.name={config.name} contradicts the {type(config).__name__} settings it came with; "
                         f"select the algorithm with algo={config.name} instead")
    algorithm.agent.check_settings(config)


def algo_config(values: dict[str, Any]) -> AlgoConfig:
    """The typed config of a saved ``algo`` mapping (e.g. a checkpoint's)."""
    algorithm = lookup(values.get("name", "?"))
    known = {f.name for f in fields(algorithm.config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"algo {values['name']!r} has no field(s) {unknown}")
    return algorithm.config(**values)


def with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A saved ``algo`` mapping with every field of its config, the ones added since it was
    saved at their defaults: what the run used, comparable with a current config."""
    return asdict(algo_config(values))


def make_agent(config: AlgoConfig, obs_spec: ObsSpec, action_dim: int, encoder_config: EncoderConfig,
               device: torch.device | str = "cpu") -> Agent:
    check_config(config)
    return REGISTRY[config.name].agent(obs_spec, action_dim, config, encoder_config, device)
