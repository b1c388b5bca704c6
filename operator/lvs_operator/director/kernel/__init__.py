"""The director's kernel layer: everything that talks to the node's kernel.

- ``netlink``: the one netlink framing core (messages, attributes, a socket)
- ``ipvs_netlink``: the IPVS generic-netlink family on it; ``ipvs``: the table <-> kernel
- ``addresses``: rtnetlink on it (routes, addresses, links) for the VIPs and the handover
- ``nft``: nftables (masquerade source NAT, the handover's relay table and ARP filter)
- ``sysctl``: ``/proc/sys``, and the node settings (director/node_settings.py) through it
- ``netns``: run a block in a network namespace (tests run two directors in one VM)
- ``dataplane``: what the agent uses (``DataPlane``: read with connection counts, apply,
  prepare)

One error type per failure kind: ``NetlinkError`` (a netlink request), ``IpvsError`` (an IPVS
change), ``NftError`` (nft), ``SysctlError`` (sysctls).
"""
