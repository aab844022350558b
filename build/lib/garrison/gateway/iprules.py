"""IP allow and deny rules: CIDR lists compiled once, a bounded cache in front of them.

``permits(ip)``: an address in ``deny`` is refused (deny wins); otherwise, when ``allow`` is not
empty, only an address in ``allow`` passes. An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what
a dual-stack socket reports for an IPv4 client) is matched as the IPv4 address, and a mapped network
in a list (``::ffff:10.0.0.0/104``) is read as the IPv4 network, so neither spelling slips past a
rule written in the other. A string that is not an IP address is refused (fail closed).

Each list is collapsed into sorted, disjoint integer ranges per address family, so a miss costs one
``ip_address`` parse and a ``bisect``, however long the lists are. Results are cached per address
string in a dict bounded to ``cache_size`` entries (oldest evicted first), so a repeat client is one
dict lookup.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["IpRules", "canonical_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _unmap_address(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def canonical_ip(text: str) -> str | None:
    """The canonical spelling of an address (mapped IPv6 as IPv4, zone dropped), or None."""
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    return str(_unmap_address(ip))


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmap_network(network: IPNetwork) -> IPNetwork:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


class _RangeSet:
    """Disjoint, sorted [first, last] integer ranges of one address family, searched by bisect."""

    __slots__ = ("firsts", "lasts")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        # Networks arrive collapsed (merged and de-duplicated) and of one family, see _compile.
        ranges = sorted((int(n.network_address), int(n.broadcast_address)) for n in networks)
        self.firsts = [first for first, _ in ranges]
        self.lasts = [last for _, last in ranges]

    def __bool__(self) -> bool:
        return bool(self.firsts)

    def __contains__(self, value: int) -> bool:
        index = bisect_right(self.firsts, value) - 1
        return index >= 0 and value <= self.lasts[index]


def _compile(cidrs: Iterable[str], what: str) -> tuple[_RangeSet, _RangeSet]:
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for cidr in cidrs:
        try:
            network = _unmap_network(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{what}: {cidr!r} is not an IP address or CIDR network") from exc
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    return _RangeSet(ipaddress.collapse_addresses(v4)), _RangeSet(ipaddress.collapse_addresses(v6))


class IpRules:
    """Compiled allow/deny lists; ``permits(ip)`` is the hot-path check."""

    __slots__ = ("_allow4", "_allow6", "_cache", "_cache_size", "_deny4", "_deny6", "_has_allow")

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = (), cache_size: int = 65_536) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._allow4, self._allow6 = _compile(allow, "allow")
        self._deny4, self._deny6 = _compile(deny, "deny")
        self._has_allow = bool(self._allow4 or self._allow6)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def __repr__(self) -> str:
        allow = len(self._allow4.firsts) + len(self._allow6.firsts)
        deny = len(self._deny4.firsts) + len(self._deny6.firsts)
        return f"IpRules(allow_ranges={allow}, deny_ranges={deny})"

    def permits(self, ip: str) -> bool:
        """Whether the client address ``ip`` may pass these rules."""
        cached = self._cache.get(ip)
        if cached is not None:
            return cached
        verdict = self._evaluate(ip)
        cache = self._cache
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # oldest first: dicts keep insertion order
        cache[ip] = verdict
        return verdict

    def _evaluate(self, text: str) -> bool:
        try:
            ip = _unmap_address(ipaddress.ip_address(text.partition("%")[0]))
        except ValueError:
            return False  # not an address: fail closed
        value = int(ip)
        if isinstance(ip, ipaddress.IPv4Address):
            deny, allow = self._deny4, self._allow4
        else:
            deny, allow = self._deny6, self._allow6
        if value in deny:
            return False
        return not self._has_allow or value in allow
