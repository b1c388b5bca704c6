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

# Pinned by Debian point release: 12.15 (bookworm). Pulled where a registry answers (Docker
# Hub's debian images are tagged by point release), else seeded from Debian's archive by
# hack/image/seed-base.sh, which checks that the archive's bookworm Release file says 12.15.
ARG BASE_IMAGE=debian:12.15-slim

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

# Python dependencies from the locks only (hack/image/lock.sh makes them from pyproject.toml
# with pip-compile --generate-hashes): pip refuses any file whose hash is not listed. Their
# layer comes before the sources, so a code change does not download them again.
COPY hack/image/build-requirements.lock hack/image/requirements.lock /locks/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install -q --no-deps --require-hashes -r /locks/build-requirements.lock \
    && python3 -m venv /opt/lvs-operator \
    && /opt/lvs-operator/bin/pip install -q --no-deps --require-hashes -r /locks/requirements.lock
# Then the package's wheel, built from the sources alone with the locked setuptools (no build
# isolation: nothing unlocked is fetched), installed without dependencies (all locked above);
# `pip check` fails the build if the lock misses one. The venv is copied whole into the runtime
# stage (same base, same /usr/bin/python3, so it stays valid). pip's compiled bytecode stays:
# the non-root processes could not write it, and start-up is faster with it.
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY operator/ operator/
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation --wheel-dir /wheels . \
    && ls -l /wheels \
    && /opt/lvs-operator/bin/pip install -q --no-deps /wheels/*.whl \
    && /opt/lvs-operator/bin/pip check \
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
# (`kubectl exec ... -- ipvsadm -Ln`). No compilers, no pip. The command is linked into
# /usr/local/bin too, so the exported file system runs it with an ordinary PATH:
# `chroot ROOTFS lvs-operator director ...` (hack/image/rootfs.sh).
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 nftables iproute2 ipvsadm \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 65532 lvs \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lvs \
    && ln -s /opt/lvs-operator/bin/lvs-operator /usr/local/bin/lvs-operator
COPY --from=build /opt/lvs-operator /opt/lvs-operator
ENV PATH=/opt/lvs-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Provenance, last so a new commit changes only this metadata: hack/image/build.sh sets them
# from git (hack/image/labels.py).
ARG BASE_IMAGE
ARG SOURCE=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
USER 65532:65532
WORKDIR /
ENTRYPOINT ["lvs-operator"]
CMD ["--help"]
