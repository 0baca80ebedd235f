"""ROUTE: an OpenAI-compatible router in front of replicas, with policies in a registry."""
from .handle import RouterHandle, StaticPool, route
from .policies import POLICIES, Policy, make_policy, register_policy
from .router import Router

__all__ = ["POLICIES", "Policy", "Router", "RouterHandle", "StaticPool", "make_policy", "register_policy", "route"]
