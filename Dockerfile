# One image for every ciq process: the worker (the default command), the observer
# (`ciq observe`), the web UI (`ciq web`) and Flower (`celery -A ciq flower`). docker-compose.yml runs them.
FROM python:3.11-slim

# git: mirrors and worktrees of the repositories under test. openssh-client: ssh:// and
# user@host: repository URLs. ca-certificates: https:// URLs (git only recommends it).
# bubblewrap: the box every untrusted process of a run starts in.
# No recommends: nothing ciq runs needs them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
        bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# A repository given as a folder is bind-mounted at /srv/repo (CIQ_REPO_DIR in
# docker-compose.yml) and owned by a user of the host, not by ciq: without these git
# refuses to read it ("detected dubious ownership"). Only this one path is trusted.
RUN git config --system --add safe.directory /srv/repo \
    && git config --system --add safe.directory /srv/repo/.git

# Logs reach `docker compose logs` as they are written.
ENV PYTHONUNBUFFERED=1
# Build-time only (ARG, not ENV): pip's `setup` steps of the code under test keep their
# cache at run time.
ARG PIP_NO_CACHE_DIR=1
ARG PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The dependencies get a layer of their own, rebuilt only when pyproject.toml changes.
# setuptools finds the packages it installs, so empty top-level ones stand in for them
# during that install; the real ones replace them below.
COPY pyproject.toml README.md ./
RUN mkdir -p ciq worker_config \
    && touch ciq/__init__.py worker_config/__init__.py \
    && pip install . \
    && pip uninstall -y ciq \
    && rm -rf build ciq worker_config ciq.egg-info
COPY ciq ciq
COPY worker_config worker_config
# /src goes once the package is in site-packages: `celery -A ciq` imports from its
# working directory first, and only the installed copy should ever be imported.
RUN pip install --no-deps . \
    && cd / && rm -rf /src
WORKDIR /

# The worker's files (mirrors, worktrees, outbox, run environments and their download
# cache) live in CIQ_DATA_DIR; docker-compose.yml mounts a named volume there. A new
# named volume copies this folder's owner, so ciq can write to it. CIQ_UID lets the
# ciq user match the owner of a bind-mounted repository on the host.
ARG CIQ_UID=1000
RUN useradd --create-home --uid "${CIQ_UID}" --user-group ciq \
    && mkdir -p /var/lib/ciq \
    && chown ciq:ciq /var/lib/ciq
ENV CIQ_DATA_DIR=/var/lib/ciq

# Not root: the code under test runs with the worker's user.
USER ciq
WORKDIR /home/ciq

# No HEALTHCHECK here: the same image runs the observer and Flower, which need other
# checks (docker-compose.yml gives each its own). No broker URL or password either:
# they come from the environment the container is started with.
CMD ["celery", "-A", "ciq", "worker", "--loglevel=INFO"]
