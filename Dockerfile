# One image for all three processes of lvs-operator:
#   lvs-operator controller   kopf controller (Deployment; runs as the image's non-root user)
#   lvs-operator director     director agent (DaemonSet, hostNetwork; see "Director" below)
#   lvs-operator realserver   configures a real server for direct/tunnel (init container)
#
# Build:  make image         (seeds the base image locally when no registry is reachable,
#                             see hack/image/; then runs an ordinary `docker build`)
#    or:  docker build -t lvs-operator:dev .
#
# No `# syntax=` line on purpose: it would make BuildKit fetch a frontend image from a
# registry. Everything here works with the classic builder and with BuildKit alike.
#
# Director: the agent programs IPVS, adds/removes the VIP, sends gratuitous ARP /
# unsolicited NA and writes net.ipv4.vs.* sysctls in the host's network namespace, so its
# DaemonSet (built by the controller) must run it with runAsUser: 0, hostNetwork: true and the
# capabilities NET_ADMIN + NET_RAW (all others dropped). A non-root user would not keep those
# capabilities (Kubernetes grants no ambient capabilities), hence root for that one process.
# The controller needs no privilege at all: the image's default user is 65532 (non-root).

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Extra CA certificates for a TLS-intercepting proxy in front of PyPI, used by this stage
# only (hack/image/build.sh copies the host's /usr/local/share/ca-certificates here; the
# directory normally holds just its README).
COPY hack/image/ca/ /usr/local/share/ca-certificates/extra/
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates \
    && update-ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# The package's wheel first, built from the sources alone (the README, pyproject.toml and
# operator/ are all it needs) ...
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install -q build \
    && /opt/build/bin/python -m build --wheel --outdir /wheels . \
    && ls -l /wheels
# ... then a virtual environment with that wheel and its dependencies, copied whole into the
# runtime stage (same base, same /usr/bin/python3, so the venv stays valid). pip's compiled
# bytecode stays: the non-root processes could not write it, and start-up is faster with it.
RUN python3 -m venv /opt/lvs-operator \
    && /opt/lvs-operator/bin/pip install -q /wheels/*.whl \
    && /opt/lvs-operator/bin/pip uninstall -q -y pip \
    && /opt/lvs-operator/bin/lvs-operator --version

# ---------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lvs-operator" \
      org.opencontainers.image.description="IPVS/LVS director pairs as a Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# python3: the interpreter the venv points at. nftables (nft): the director's source-NAT rule
# for masquerade. iproute2 (ip) and ipvsadm: for looking at a director by hand
# (`kubectl exec ... -- ipvsadm -Ln`). No compilers, no pip.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 nftables iproute2 ipvsadm \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 65532 lvs \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lvs
COPY --from=build /opt/lvs-operator /opt/lvs-operator
ENV PATH=/opt/lvs-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /
ENTRYPOINT ["lvs-operator"]
CMD ["--help"]
