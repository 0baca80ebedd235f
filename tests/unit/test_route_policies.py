"""Routing policies, on their own: which replica each picks for a given load and key."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from labkit.config import RouterConfig
from labkit.route import POLICIES, Policy, make_policy, register_policy
from labkit.route.policies import PrefixAffinity

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class R:
    name: str


REPLICAS = [R("a"), R("b"), R("c"), R("d")]


def test_the_registry_has_the_four_policies_and_refuses_unknown_names():
    assert {"round_robin", "least_outstanding", "power_of_two", "prefix_affinity"} <= set(POLICIES)
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'.*round_robin"):
        make_policy("fastest")


def test_a_registered_policy_is_usable_by_name():
    @register_policy("always_last")
    class AlwaysLast(Policy):
        def choose(self, candidates, load, key):
            return candidates[-1]

    try:
        assert make_policy("always_last").choose(REPLICAS, {}, None).name == "d"
    finally:
        POLICIES.pop("always_last")


def test_round_robin_takes_each_replica_in_turn_whatever_the_load():
    policy = make_policy("round_robin")
    picks = [policy.choose(REPLICAS, {"a": 100}, None).name for _ in range(8)]
    assert picks == ["a", "b", "c", "d"] * 2


def test_least_outstanding_picks_the_least_loaded_and_spreads_ties():
    policy = make_policy("least_outstanding")
    assert policy.choose(REPLICAS, {"a": 3, "b": 1, "c": 2, "d": 5}, None).name == "b"
    ties = Counter(policy.choose(REPLICAS, {}, None).name for _ in range(40))
    assert set(ties) == {"a", "b", "c", "d"}


def test_power_of_two_never_picks_the_most_loaded_and_balances_over_time():
    policy = make_policy("power_of_two", seed=1)
    load = {"a": 9, "b": 0, "c": 0, "d": 0}
    assert all(policy.choose(REPLICAS, load, None).name != "a" for _ in range(200))
    load = {r.name: 0 for r in REPLICAS}
    for _ in range(400):  # each pick adds load: the counts end up close together
        load[policy.choose(REPLICAS, load, None).name] += 1
    assert max(load.values()) - min(load.values()) <= 2


def test_prefix_affinity_keeps_a_key_on_one_replica_and_moves_only_a_dead_replicas_keys():
    policy = make_policy("prefix_affinity")
    keys = [f"session:{i}" for i in range(200)]
    owners = {k: policy.choose(REPLICAS, {}, k).name for k in keys}
    assert all(policy.choose(REPLICAS, {"a": 50}, k).name == owners[k] for k in keys)  # load does not move keys
    assert len(set(owners.values())) == 4 and min(Counter(owners.values()).values()) > 25
    survivors = [r for r in REPLICAS if r.name != "b"]
    moved = {k for k in keys if policy.choose(survivors, {}, k).name != owners[k]}
    assert moved == {k for k, owner in owners.items() if owner == "b"}
    assert PrefixAffinity.owner(keys[0], ["a", "b", "c", "d"]) == owners[keys[0]]


def test_prefix_affinity_without_a_key_balances_like_least_outstanding():
    policy = make_policy("prefix_affinity")
    assert policy.choose(REPLICAS, {"a": 3, "b": 1, "c": 2, "d": 5}, None).name == "b"


def test_router_config_refuses_nonsense():
    with pytest.raises(ValueError, match="max_outstanding_per_replica"):
        RouterConfig(max_outstanding_per_replica=0)
