#!/usr/bin/env bash
# End-to-end container test: build the image, `compose up`, wait for healthy, POST a PNG to /predict and
# /attention-map, check the JSON, check that SIGTERM lets an in-flight request finish, and tear down
# (always). Works online and offline:
#   - starts dockerd when no engine answers (needs root);
#   - uses the real python:3.11-slim when it is present or can be pulled, else a stand-in built by
#     scripts/container_base.sh (debootstrap) under a tag of its own, never python:3.11-slim, passed to
#     the build as PYTHON_IMAGE;
#   - when download.pytorch.org is unreachable, serves this host's torch wheel and its dependencies
#     from a local PEP 503 index (pip download + python -m http.server) and passes it as TORCH_INDEX_URL;
#   - builds with host networking and hands pip this host's CA bundle as a BuildKit secret, so nothing
#     machine-specific enters the Dockerfile or the image.
# Then it runs the image as the Helm chart's pod does and checks its drain (scripts/chart_pod_check.py,
# with helm from `make tools`).
# Usage: scripts/container_test.sh   (env: PYTHON, GLIMPSE_IMAGE, HELM, KEEP_ENGINE=1 to leave a started
# dockerd)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
IMAGE="${GLIMPSE_IMAGE:-glimpse:cpu}"
export GLIMPSE_IMAGE="$IMAGE"  # docker-compose.yml runs this tag
OFFICIAL_BASE="python:3.11-slim"  # the Dockerfile's default PYTHON_IMAGE
# The local stand-in's own tag: tagged python:3.11-slim, it would shadow the official image on this
# machine for every later build and `docker run`.
STANDIN_BASE="${GLIMPSE_STANDIN_BASE:-glimpse-python-standin:3.11-bookworm}"
base_image=""
TORCH_VERSION="$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)"
workdir="$(mktemp -d)"
project="glimpse-test-$$"
started_engine=""
index_pid=""

log() { printf '==> %s\n' "$*" >&2; }

# A free TCP port on 127.0.0.1: the preferred one ($1) when it is free, else any.
free_port() {
    "$PYTHON" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "${1:-0}"
}

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
compose+=(--project-name "$project" --file docker-compose.yml)

cleanup() {
    local rc=$?
    set +e  # tear down as much as possible, whatever fails
    if [[ -n "${GLIMPSE_PORT:-}" ]]; then
        log "tearing down"
        "${compose[@]}" down --volumes --timeout 30 >/dev/null 2>&1 || true
    fi
    if [[ -n "$index_pid" ]]; then kill "$index_pid" 2>/dev/null; wait "$index_pid" 2>/dev/null; fi
    if [[ -n "$started_engine" && -z "${KEEP_ENGINE:-}" ]]; then
        log "stopping the dockerd this test started"
        kill "$started_engine" 2>/dev/null
        while kill -0 "$started_engine" 2>/dev/null; do sleep 0.5; done
    fi
    rm -rf "$workdir"
    exit "$rc"
}
trap cleanup EXIT

ensure_engine() {
    docker info >/dev/null 2>&1 && return
    log "no Docker engine answers: starting dockerd"
    dockerd >"$workdir/dockerd.log" 2>&1 &
    started_engine=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
    tail -20 "$workdir/dockerd.log" >&2
    return 1
}

# Sets base_image: the official image when it is here or can be pulled, else the local stand-in.
ensure_base_image() {
    local comment
    comment="$(docker image inspect --format '{{.Comment}}' "$OFFICIAL_BASE" 2>/dev/null || true)"
    if [[ "$comment" == *"debootstrap stand-in"* ]]; then
        # Left by an older version of this test, which tagged its stand-in python:3.11-slim.
        log "$OFFICIAL_BASE here is a local stand-in: retagging it $STANDIN_BASE"
        docker tag "$OFFICIAL_BASE" "$STANDIN_BASE"
        docker rmi "$OFFICIAL_BASE" >/dev/null
    elif [[ -n "$comment" ]] || docker image inspect "$OFFICIAL_BASE" >/dev/null 2>&1; then
        log "base image $OFFICIAL_BASE is present"
        base_image="$OFFICIAL_BASE"
        return
    fi
    if timeout 300 docker pull "$OFFICIAL_BASE" >/dev/null 2>&1; then
        log "pulled $OFFICIAL_BASE"
        base_image="$OFFICIAL_BASE"
        return
    fi
    base_image="$STANDIN_BASE"
    if docker image inspect "$STANDIN_BASE" >/dev/null 2>&1; then
        log "cannot pull $OFFICIAL_BASE: using the local stand-in $STANDIN_BASE"
        return
    fi
    log "cannot pull $OFFICIAL_BASE: building a local stand-in, $STANDIN_BASE, with debootstrap"
    local start=$SECONDS
    scripts/container_base.sh "$STANDIN_BASE" >&2
    log "base image ready in $((SECONDS - start)) s"
}

# Sets torch_index_url: the official index, or a local mirror of this host's wheels. Not called in a
# $(...) subshell, so that cleanup() sees index_pid and stops the server.
torch_index_url=""
choose_torch_index() {
    local official="https://download.pytorch.org/whl/cpu"
    if "$PYTHON" -c "import urllib.request as u; u.urlopen('$official/torch/', timeout=10)" 2>/dev/null; then
        torch_index_url="$official"
        return
    fi
    log "cannot reach $official: serving torch==$TORCH_VERSION from a local index"
    "$PYTHON" -m pip download --only-binary=:all: --python-version 3.11 \
        --dest "$workdir/wheels" "torch==$TORCH_VERSION" >"$workdir/download.log" 2>&1 \
        || { tail -20 "$workdir/download.log" >&2; return 1; }
    # PEP 503 layout: one directory per normalized project name; http.server's listing is the index page.
    local wheel name
    for wheel in "$workdir"/wheels/*.whl; do
        name="$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')"
        mkdir -p "$workdir/simple/$name" && mv "$wheel" "$workdir/simple/$name/"
    done
    # A stable port keeps the build argument, and so Docker's layer cache, the same from run to run.
    local port
    port="$(free_port 8765)"
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$workdir" "$port" >/dev/null 2>&1 &
    index_pid=$!
    for _ in $(seq 20); do
        "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/simple/torch/')" \
            2>/dev/null && break
        sleep 0.25
    done
    torch_index_url="http://127.0.0.1:$port/simple"
}

# Prints the build command: BuildKit is needed for the secret mount (buildx, or a client with it built in).
build_command() {
    if docker buildx version >/dev/null 2>&1; then echo "docker buildx build --load"; return; fi
    local client
    for client in $(type -ap docker); do
        if DOCKER_BUILDKIT=1 "$client" build --help 2>/dev/null | grep -q -- '--secret'; then
            echo "env DOCKER_BUILDKIT=1 $client build"
            return
        fi
    done
    log "no docker client here can build with BuildKit (install docker-buildx)"
    return 1
}

build_image() {
    local index_url="$1" ca_bundle build
    build="$(build_command)"
    ca_bundle="${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-}}}"
    local args=(--network host --tag "$IMAGE" --build-arg "PYTHON_IMAGE=$base_image"
        --build-arg "TORCH_INDEX_URL=$index_url")
    [[ -s "$ca_bundle" ]] && args+=(--secret "id=pip_ca,src=$ca_bundle")
    log "building $IMAGE on $base_image ($build)"
    local start=$SECONDS
    $build --progress plain "${args[@]}" . >"$workdir/build.log" 2>&1 || { tail -40 "$workdir/build.log" >&2; return 1; }
    log "built $IMAGE in $((SECONDS - start)) s; size $(docker image inspect --format '{{.Size}}' "$IMAGE" \
        | awk '{printf "%.0f MB", $1 / 1e6}')"
    log "image config: $(docker image inspect --format '{{json .Config}}' "$IMAGE")"
}

# compose up, wait for healthy, round trip; extra arguments go to container_smoke.py.
up_and_check() {
    log "docker compose up -d (host port $GLIMPSE_PORT, GLIMPSE_MODEL_DIR=${GLIMPSE_MODEL_DIR:-default})"
    "${compose[@]}" up -d --no-build
    wait_healthy
    "$PYTHON" scripts/container_smoke.py "http://127.0.0.1:$GLIMPSE_PORT" "$@"
}

wait_healthy() {
    local container status
    container="$("${compose[@]}" ps -q glimpse)"
    for _ in $(seq 90); do
        status="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
        [[ "$status" == healthy ]] && { log "container is healthy"; return; }
        sleep 2
    done
    log "container never became healthy (last status: $status)"
    "${compose[@]}" logs --no-color --tail 40 >&2
    return 1
}

ensure_engine
ensure_base_image
choose_torch_index
build_image "$torch_index_url"

GLIMPSE_PORT="$(free_port)"
export GLIMPSE_PORT

# 1. The model baked into the image.
up_and_check --model-version "$(sed -n 's/^  "version": "\(.*\)",$/\1/p' models/default/card.json)"

# 2. A user's model from a read-only bind mount (a copy of the default with its own version), served by
#    two workers (app.serve as PID 1 passes SIGTERM on to both), then a graceful stop with a request in
#    flight.
mkdir -p "$workdir/user-model"
cp models/default/model.safetensors models/default/domain.safetensors "$workdir/user-model/"
sed 's/^  "version": ".*",$/  "version": "0.0.0-user",/' models/default/card.json >"$workdir/user-model/card.json"
chmod -R a+rX "$workdir/user-model"
export GLIMPSE_MODEL_HOST_DIR="$workdir/user-model" GLIMPSE_MODEL_DIR=/models/user WEB_CONCURRENCY=2
up_and_check --model-version 0.0.0-user --stop-command "${compose[*]} stop --timeout 30 glimpse"
container="$("${compose[@]}" ps -q glimpse)"
log "service log tail:"
"${compose[@]}" logs --no-color --tail 8 glimpse >&2
ready_lines="$("${compose[@]}" logs --no-color glimpse | grep -c 'glimpse: ready in' || true)"
[[ "$ready_lines" == 2 ]] || { log "expected 2 workers to start, saw $ready_lines"; exit 1; }
exit_code="$(docker inspect --format '{{.State.ExitCode}}' "$container")"
[[ "$exit_code" == 0 ]] || { log "container exited with $exit_code after SIGTERM"; exit 1; }
log "container stopped cleanly (exit code 0)"

# 3. The image as the Helm chart's pod runs it (its command, arguments, environment, user, read-only
#    root with a tmpfs /tmp, no capabilities), and the drain the chart relies on: after SIGTERM,
#    /health/ready answers 503 while /predict is still answered, then a clean exit in the grace period.
log "the image as deploy/helm/glimpse runs it"
"$PYTHON" -m scripts.chart_pod_check "$IMAGE" --port "$GLIMPSE_PORT" --helm "${HELM:-.tools/helm}"

if [[ "$(docker image inspect --format '{{.Comment}}' "$OFFICIAL_BASE" 2>/dev/null)" == *"debootstrap stand-in"* ]]; then
    log "a local stand-in is tagged $OFFICIAL_BASE"
    exit 1
fi
log "built on $base_image; no local stand-in is tagged $OFFICIAL_BASE"
log "PASS"
