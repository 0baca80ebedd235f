"""Routing policies: which replica gets the next request. A registry, so a new policy is one class.

A policy sees only what it needs: the candidate replicas (healthy, not full, not already tried for this
request), each one's in-flight count, and the request's affinity key (a session id, or its prompt prefix).
It must return one of the candidates. Policies keep at most a counter or a random generator as state.

    @register_policy("my_policy")
    class MyPolicy(Policy):
        def choose(self, candidates, load, key):
            return candidates[0]
"""
from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Protocol


class Target(Protocol):
    name: str


POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str):
    def add(cls):
        cls.name = name
        POLICIES[name] = cls
        return cls
    return add


def make_policy(name: str, seed: int | None = None) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[name](seed=seed)


class Policy:
    name = "policy"

    def __init__(self, seed: int | None = None):
        self.random = random.Random(seed)

    def choose(self, candidates: Sequence[Target], load: Mapping[str, int], key: str | None) -> Target:
        raise NotImplementedError


@register_policy("round_robin")
class RoundRobin(Policy):
    """Each replica in turn, whatever its load."""

    def __init__(self, seed=None):
        super().__init__(seed)
        self._turn = itertools.count()

    def choose(self, candidates, load, key):
        return candidates[next(self._turn) % len(candidates)]


@register_policy("least_outstanding")
class LeastOutstanding(Policy):
    """The replica with the fewest requests in flight (ties go round the replicas in turn)."""

    def __init__(self, seed=None):
        super().__init__(seed)
        self._turn = itertools.count()

    def choose(self, candidates, load, key):
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start] if isinstance(candidates, list) else \
            tuple(candidates[start:]) + tuple(candidates[:start])
        return min(rotated, key=lambda r: load.get(r.name, 0))


@register_policy("power_of_two")
class PowerOfTwo(Policy):
    """Two replicas at random, the less loaded of them: nearly least-outstanding's balance without
    looking at every replica, and no herd onto one replica when load figures are stale."""

    def choose(self, candidates, load, key):
        if len(candidates) == 1:
            return candidates[0]
        a, b = self.random.sample(list(candidates), 2)
        return a if load.get(a.name, 0) <= load.get(b.name, 0) else b


def _weight(key: str, replica: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{replica}".encode(), digest_size=8).digest(), "big")


@register_policy("prefix_affinity")
class PrefixAffinity(Policy):
    """Requests with the same key (session id, else prompt prefix) go to the same replica while it is healthy,
    so its cache of that prefix is reused. Rendezvous hashing: when a replica leaves, only its keys move, and
    a key whose replica is full (not a candidate) goes to its next replica in hash order, the same one each
    time. A request with no key falls back to least outstanding."""

    def __init__(self, seed=None):
        super().__init__(seed)
        self._fallback = LeastOutstanding(seed)

    def choose(self, candidates, load, key):
        if key is None:
            return self._fallback.choose(candidates, load, key)
        return max(candidates, key=lambda r: _weight(key, r.name))

    @staticmethod
    def owner(key: str, names: Sequence[str]) -> str:
        """Which of `names` owns `key` (the same choice `choose` makes when all are candidates)."""
        return max(names, key=lambda n: _weight(key, n))
