"""The policy file: loading, validation and the frozen objects the gateway runs on."""

from gateway.config.errors import PolicyError, Problem
from gateway.config.loader import Loaded, load_policy
from gateway.settings.policy import Policy

__all__ = ["Loaded", "Policy", "PolicyError", "Problem", "load_policy"]
