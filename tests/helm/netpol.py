"""A small evaluator of NetworkPolicy objects, to prove flows by the policies' own rules rather than by reading them.

Kubernetes' semantics, for the parts the chart uses: a pod selected by no policy of a direction is open in it;
a selected pod admits a flow when any rule of any selecting policy matches both the peer and the port. A peer
is an ipBlock, or pods chosen by podSelector (in the policy's namespace) and/or namespaceSelector.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def ns_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


@dataclass(frozen=True)
class Address:
    """Something outside the cluster's pods (the API server, the internet), known by its IP."""

    ip: str


Endpoint = Pod | Address


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions ANDed; an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, Address):
            return False  # the chart names pods by selectors; an ipBlock here stands for an outside address
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        inside = ip in ipaddress.ip_network(block["cidr"])
        return inside and not any(ip in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
    if isinstance(other, Address):
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], other.ns_labels())
    else:
        namespace_ok = other.namespace == policy_namespace
    return namespace_ok and ("podSelector" not in peer or selects(peer["podSelector"], other.labels))


def _port_matches(ports: Iterable[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    ports = list(ports or [])
    if not ports:
        return True
    for rule in ports:
        if rule.get("protocol", "TCP") != protocol:
            continue
        if "port" not in rule:
            return True
        assert isinstance(rule["port"], int), f"named ports are not evaluated here: {rule}"
        if rule["port"] <= port <= rule.get("endPort", rule["port"]):
            return True
    return False


def _open(policies: list[dict[str, Any]], pod: Pod, direction: str, other: Endpoint, port: int, protocol: str) -> bool:
    """Does `pod` admit the flow in `direction` ("Ingress": other -> pod, "Egress": pod -> other)?"""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, pod.namespace, other) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(
    policies: list[dict[str, Any]], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """May `source` open a connection to `target` on port/protocol, given these NetworkPolicies?"""
    egress_ok = not isinstance(source, Pod) or _open(policies, source, "Egress", target, port, protocol)
    ingress_ok = not isinstance(target, Pod) or _open(policies, target, "Ingress", source, port, protocol)
    return egress_ok and ingress_ok
