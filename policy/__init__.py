"""Agents, losses and training entry points."""
