"""The three-tier example (examples/three-tier/) run for real: Apache httpd with PHP serving
from NFS, MariaDB, in the network namespaces of the example's kwok pods (issue 20).

- ``example``: the example's manifests parsed into one typed value (pure; the single source
  of addresses, ports, virtual hosts, persistence, credentials, page and schema);
- ``services``: start and stop the real daemons (mariadbd, rpc.nfsd/rpc.mountd, apache2) in
  a network namespace, as root (in the VM; the web tier and the database on a host too).
"""
