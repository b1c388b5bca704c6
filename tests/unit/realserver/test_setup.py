"""Real-server set-up plan (the kernel side is exercised in the data-plane tier)."""

from __future__ import annotations

import pytest

from lvs_operator.realserver.setup import parse_args, plan


def test_direct_puts_vips_on_loopback_and_suppresses_arp() -> None:
    p = plan(["10.10.0.100", "2001:db8::100"], "direct")
    assert p.addresses == (("lo", "10.10.0.100", 32), ("lo", "2001:db8::100", 128))
    assert p.modules == () and p.up == ()
    assert ("net.ipv4.conf.all.arp_ignore", "1") in p.sysctls
    assert ("net.ipv4.conf.all.arp_announce", "2") in p.sysctls
    assert not any("rp_filter" in k for k, _ in p.sysctls)


def test_tunnel_uses_ipip_and_relaxes_rp_filter() -> None:
    p = plan(["10.10.0.100", "10.10.0.101"], "tunnel")
    assert p.modules == ("ipip",)
    assert p.up == ("tunl0",)
    assert p.addresses == (("tunl0", "10.10.0.100", 32), ("tunl0", "10.10.0.101", 32))
    assert ("net.ipv4.conf.tunl0.rp_filter", "0") in p.sysctls
    assert ("net.ipv4.conf.all.rp_filter", "<=2") in p.sysctls


def test_tunnel_ipv6_uses_ip6tnl() -> None:
    p = plan(["2001:db8::100"], "tunnel")
    assert p.modules == ("ip6_tunnel",)
    assert p.addresses == (("ip6tnl0", "2001:db8::100", 128),)


def test_args_reject_a_bad_vip(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--vip", "nope", "--mode", "direct"])
    assert "not an IPv4 or IPv6 address" in capsys.readouterr().err
    args = parse_args(["--vip", "10.0.0.1", "--vip", "10.0.0.2", "--mode", "tunnel", "--cleanup"])
    assert args.vip == ["10.0.0.1", "10.0.0.2"] and args.cleanup
