# syntax=docker/dockerfile:1
#
# Quiver server image: `quiver` is the entrypoint, so the arguments are a Quiver command:
#   docker build -t quiver:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/my-repo:/repo" -p 6566:6566 quiver:0.1.0 serve
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/my-repo:/repo" -p 8815:8815 quiver:0.1.0 serve-flight
# The working directory /repo is the default feature repo (override with --repo or QUIVER_REPO).
# The Helm chart in deploy/helm/quiver runs this image read-only as user 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the servers and the SDK they depend on, installed into /opt/quiver -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml ./clients/python/pyproject.toml
COPY clients/python/src ./clients/python/src
COPY server/src ./server/src
COPY flight/src ./flight/src
COPY scripts/smoke_servers.py ./scripts/smoke_servers.py
# The project (quiver-feature-store) and the SDK it depends on by path (quiver-client, from
# ./clients/python) are built here; every other dependency comes as a wheel (--only-binary), so
# no compiler is needed in any stage and a dependency without a wheel for this platform fails the
# build instead of compiling in it. The runtime environment has no pip: it is installed into
# from the outside (--python).
# The smoke test then starts `quiver serve` and `quiver serve-flight` from that environment on
# a demo repo and probes both (health, a lookup, a training set): an undeclared dependency
# fails the build here rather than crash-looping a Deployment.
RUN python -m venv --without-pip /opt/quiver \
 && python -m pip --python /opt/quiver/bin/python install --only-binary=:all: . \
 && /opt/quiver/bin/quiver --help > /dev/null \
 && /opt/quiver/bin/python scripts/smoke_servers.py --quiver /opt/quiver/bin/quiver

# ---- runtime: the base image, the environment and an unprivileged user, nothing else ---------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="quiver" \
      org.opencontainers.image.description="Quiver feature store: gRPC online serving and Arrow Flight training sets" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 quiver \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin quiver \
 && mkdir /repo \
 && chown 10001:10001 /repo
COPY --from=build /opt/quiver /opt/quiver
ENV PATH=/opt/quiver/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /repo
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# gRPC serving, Arrow Flight, Prometheus metrics.
EXPOSE 6566 8815 9464
ENTRYPOINT ["quiver"]
CMD ["serve"]
