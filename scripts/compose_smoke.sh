#!/usr/bin/env bash
# The compose stack for real, as a user drives it: build, `up -d`, the notebook's two networks
# over HTTP with the API key, a worker restart in the middle of a job, `down` + `up` with the
# data kept, and a request without the key. Prints each step with its time.
#
#   scripts/compose_smoke.sh
#
# Uses docker-compose.yml as it is plus docker/compose.local.yml (local stand-in images and
# wheels/ from scripts/docker_base_images.sh) unless BNLAB_SMOKE_LOCAL=0 (official images from a
# registry, torch from its index). The .env (a fresh key) is written to a temporary folder and
# passed with --env-file; nothing is left in the checkout but the git-ignored wheels/.
#
# Environment:
#   BNLAB_SMOKE_PORT     host port of the API (default 18000)
#   BNLAB_SMOKE_PROJECT  compose project name (default bnlab-smoke)
#   BNLAB_SMOKE_LOCAL    1 (default): local images; 0: the registry's
#   BNLAB_SMOKE_KEEP     1: leave the stack (and a dockerd this script started) running
#   BNLAB_SMOKE_RESTART_EPOCHS  epochs of the job the worker restart interrupts (default 60)
#   BNLAB_DOCKER_CACHE   where images' inputs are cached (default /var/cache/bnlab-docker)
#
# Exit status: 0 passed; 1 a step failed (the stack's logs are printed); 3 no Docker engine can
# run here (the cause is printed; nothing was tested).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PORT="${BNLAB_SMOKE_PORT:-18000}"
PROJECT="${BNLAB_SMOKE_PROJECT:-bnlab-smoke}"
LOCAL="${BNLAB_SMOKE_LOCAL:-1}"
KEEP="${BNLAB_SMOKE_KEEP:-0}"
RESTART_EPOCHS="${BNLAB_SMOKE_RESTART_EPOCHS:-60}"
URL="http://127.0.0.1:$PORT"
CSV=models/data/concertriccir2.csv
PY="python3"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
# The env file decides, as a user's .env would: nothing from the caller's shell leaks in.
unset BNLAB_API_KEYS BNLAB_PORT BASE_IMAGE TORCH_INDEX REDIS_IMAGE POSTGRES_IMAGE

T0=$SECONDS
STEP=""
STEP_T=0
SUMMARY=()
log() { printf '%s\n' "$*"; }
step() {  # name: ends the previous step (its time into SUMMARY) and starts this one
    step_end
    STEP="$1"; STEP_T=$SECONDS
    printf '\n== [%4ds] %s\n' "$((SECONDS - T0))" "$STEP"
}
step_end() {
    if [ -n "$STEP" ]; then
        local dt=$((SECONDS - STEP_T))
        printf '   (%ds)\n' "$dt"
        SUMMARY+=("$(printf '%5ds  %s' "$dt" "$STEP")")
        STEP=""
    fi
}
fail() { printf '\nFAILED in step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }

# --- engine ------------------------------------------------------------------------------------
step "docker engine (scripts/dockerd_up.sh)"
rc=0
out="$(scripts/dockerd_up.sh)" || rc=$?
if [ "$rc" != 0 ]; then
    if [ "$rc" = 3 ]; then
        printf '\nNO DOCKER ENGINE HERE: nothing tested (see the cause above)\n' >&2
        exit 3
    fi
    fail "dockerd_up.sh exited $rc"
fi
eval "$out"
STARTED_DOCKERD="${BNLAB_DOCKERD_STARTED:-}"
docker version --format 'client {{.Client.Version}}, engine {{.Server.Version}}'
if ! command -v docker-compose >/dev/null 2>&1; then
    log "installing docker-compose (apt)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends docker-compose >/dev/null; } \
        || fail "docker-compose is missing and apt could not install it"
fi
docker-compose version --short

WORK="$(mktemp -d /tmp/bnlab-smoke.XXXXXX)"
BODY="$WORK/body"
FILES=(-f docker-compose.yml)
[ "$LOCAL" = 1 ] && FILES+=(-f docker/compose.local.yml)
dc() { docker-compose --env-file "$WORK/.env" -p "$PROJECT" "${FILES[@]}" "$@"; }

cleanup() {
    local rc=$?
    step_end
    set +e
    if [ "$rc" != 0 ] && [ "$rc" != 3 ] && [ -f "$WORK/.env" ]; then
        printf '\n== the stack when it failed\n'
        dc ps
        dc logs --no-color --tail=60
    fi
    if [ "$KEEP" = 1 ]; then
        printf '\nBNLAB_SMOKE_KEEP=1: the stack stays up (%s, key in %s/.env):\n  %s\n' \
            "$URL" "$WORK" "docker-compose --env-file $WORK/.env -p $PROJECT ${FILES[*]} down -v"
    else
        if [ -f "$WORK/.env" ]; then
            printf '\n== cleanup: down -v\n'
            dc down -v --remove-orphans 2>&1 | tail -n 3
        fi
        if [ -n "$STARTED_DOCKERD" ]; then scripts/dockerd_up.sh --stop; fi
        rm -rf "$WORK"
    fi
    printf '\n== steps\n'
    printf '%s\n' "${SUMMARY[@]}"
    printf '%5ds  total, exit %s\n' "$((SECONDS - T0))" "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- HTTP helpers --------------------------------------------------------------------------------
KEY="bnlab_$($PY -c 'import secrets; print(secrets.token_urlsafe(32))')"
AUTH=(-H "Authorization: Bearer $KEY")
CODE=""
req() {  # METHOD PATH [curl args...]: body in $BODY, status in $CODE
    local method="$1" path="$2"; shift 2
    CODE="$(curl -sS -o "$BODY" -w '%{http_code}' -X "$method" "${AUTH[@]}" "$@" "$URL$path")" \
        || CODE=000
}
want() {  # CODE what
    [ "$CODE" = "$1" ] || fail "$2: HTTP $CODE, wanted $1: $(head -c 600 "$BODY" 2>/dev/null)"
}
pj() {  # python expression over the JSON body `d`
    "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
        "$BODY" "$1"
}
check() {  # python expression over `d` that must be true; message
    "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$BODY" "$1" || fail "$2: $(head -c 600 "$BODY")"
}
wait_ready() {  # seconds
    local deadline=$((SECONDS + $1))
    until [ "$(curl -s -o "$BODY" -w '%{http_code}' "$URL/readyz" 2>/dev/null)" = 200 ]; do
        [ "$SECONDS" -lt "$deadline" ] || { cat "$BODY" 2>/dev/null; fail "no 200 from /readyz within $1 s"; }
        sleep 1
    done
    log "GET /readyz: $(cat "$BODY")"
}
wait_job() {  # id seconds: until it finishes; fails unless it succeeded
    local id="$1" deadline=$((SECONDS + $2)) status
    while :; do
        req GET "/v1/jobs/$id"; want 200 "GET /v1/jobs/$id"
        status="$(pj 'd["status"]')"
        case "$status" in
            succeeded) log "job $id ($(pj 'd["name"]')): succeeded, $(pj 'd["epoch"]')/$(pj 'd["epochs"]') epochs, final val_accuracy $(pj '(d.get("final_metrics") or {}).get("val_accuracy")'), $(pj 'd.get("elapsed_s")') s, attempts $(pj 'd["attempts"]')"; return ;;
            failed|cancelled) fail "job $id $status: $(pj 'd.get("error")')" ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || fail "job $id still $status after $2 s"
        sleep 1
    done
}
check_history() {  # id epochs
    req GET "/v1/jobs/$1/history"; want 200 "GET /v1/jobs/$1/history"
    check "d['epoch'] == list(range(1, $2 + 1))" "history of $1: epochs are not exactly 1..$2"
    check "all(len(d[k]) == $2 for k in ('loss', 'accuracy', 'val_loss', 'val_accuracy'))" \
        "history of $1: a metric without $2 values"
    log "history of $1: epochs 1..$2 once each; last val_accuracy $(pj 'd["val_accuracy"][-1]')"
}
submit() {  # json: prints the id
    req POST /v1/jobs -H 'content-type: application/json' -d "$1"
    want 202 "POST /v1/jobs"
    pj 'd["id"]'
}

# --- images ------------------------------------------------------------------------------------
if [ "$LOCAL" = 1 ]; then
    step "local base images and wheels/ (scripts/docker_base_images.sh)"
    scripts/docker_base_images.sh
fi

step ".env with a fresh API key (README: cp .env.example .env, set BNLAB_API_KEYS)"
sed -e "s|^BNLAB_API_KEYS=.*|BNLAB_API_KEYS=$KEY|" -e "s|^# *BNLAB_PORT=.*|BNLAB_PORT=$PORT|" \
    .env.example >"$WORK/.env"
grep -q "^BNLAB_API_KEYS=$KEY\$" "$WORK/.env" && grep -q "^BNLAB_PORT=$PORT\$" "$WORK/.env" \
    || fail ".env.example no longer has BNLAB_API_KEYS= and # BNLAB_PORT= lines"
log "$WORK/.env; compose files: ${FILES[*]}; project $PROJECT"
dc down -v --remove-orphans >/dev/null 2>&1 || true   # a stack left by an earlier run

step "docker-compose build"
dc build >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "docker-compose build failed"; }
log "$(grep -c '^Step ' "$WORK/build.log") build steps, $(grep -c 'Using cache' "$WORK/build.log") from the cache"
grep -E '^(Building|Successfully)' "$WORK/build.log" | cut -c1-160 || true
docker image inspect -f 'bnlab:latest {{.Id}} {{.Size}} bytes' bnlab:latest \
    || fail "the build left no bnlab:latest"

step "docker-compose up -d; wait for /readyz"
dc up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "docker-compose up -d failed"; }
tail -n 8 "$WORK/up.log"
wait_ready 180
[ "$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -q migrate)")" = 0 ] \
    || fail "migrate did not exit 0"
log "migrate: $(dc logs --no-color migrate | grep -o 'database at head.*' | tail -n1)"

step "a request without the key gets 401"
CODE="$(curl -sS -o "$BODY" -w '%{http_code}' "$URL/v1/jobs")"
want 401 "GET /v1/jobs without Authorization"
CODE="$(curl -sS -o "$BODY" -w '%{http_code}' -H 'Authorization: Bearer wrong' "$URL/v1/jobs")"
want 401 "GET /v1/jobs with a wrong key"
log "401 without a key and with a wrong one"

step "upload the notebook's CSV"
[ -s "$CSV" ] || fail "$CSV is missing from the checkout"
req POST /v1/datasets -F "file=@$CSV"
want 201 "POST /v1/datasets"
DS="$(pj 'd["id"]')"
log "dataset $DS: $(pj 'd["n_rows"]') rows, classes $(pj 'd["class_counts"]')"
BN_DATASET="{\"id\": \"$DS\"}"
req GET /v1/datasets/builtin; want 200 "GET /v1/datasets/builtin"
if [ "$(pj '"concertriccir2" in json.dumps(d)')" = True ]; then
    BN_DATASET='{"name": "concertriccir2"}'
    log "the built-in concertriccir2 exists: the BN network trains on it, the plain one on the upload"
fi

step "submit both notebook networks (200 epochs, batch 32, tail split 0.2)"
TRAINING='"training": {"epochs": 200, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.001},
               "validation_split": 0.2, "split": "tail", "seed": 1}'
PLAIN="$(submit '{"name": "plain", "dataset": {"id": "'"$DS"'"},
  "network": {"layers": [
    {"type": "dense", "units": 2, "activation": "relu"},
    {"type": "dense", "units": 2, "activation": "relu"},
    {"type": "dense", "units": 1, "activation": "sigmoid"}]}, '"$TRAINING"'}')"
BN="$(submit '{"name": "bn", "dataset": '"$BN_DATASET"',
  "network": {"layers": [
    {"type": "dense", "units": 3, "activation": "relu"},
    {"type": "batchnorm"},
    {"type": "dense", "units": 2, "activation": "relu"},
    {"type": "batchnorm"},
    {"type": "dense", "units": 1, "activation": "sigmoid"}]}, '"$TRAINING"'}')"
log "plain $PLAIN, bn $BN"

step "wait for both to succeed"
wait_job "$PLAIN" 300
wait_job "$BN" 300

step "histories: 200 epochs each"
check_history "$PLAIN" 200
check_history "$BN" 200

step "predict, checkpoint download, ONNX export"
req POST "/v1/jobs/$BN/predict" -H 'content-type: application/json' \
    -d '{"inputs": [[0.1, 0.2], [2.5, -1.8]], "checkpoint": "best"}'
want 200 "POST /v1/jobs/$BN/predict"
check 'len(d["classes"]) == 2 and all(abs(sum(p) - 1) < 1e-6 for p in d["probabilities"])' \
    "predict: not 2 rows of probabilities"
log "predict: classes $(pj 'd["classes"]'), checkpoint $(pj 'd["checkpoint"]')"
req GET "/v1/jobs/$BN/checkpoints/best"; want 200 "GET /v1/jobs/$BN/checkpoints/best"
cp "$BODY" "$WORK/bn.safetensors"
"$PY" - "$WORK/bn.safetensors" <<'EOF' || fail "the checkpoint is not a safetensors file"
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
header = json.loads(b[8:8 + n])
tensors = [k for k in header if k != "__metadata__"]
assert tensors and 8 + n < len(b), "no tensors"
print(f"checkpoint: {len(b)} bytes of safetensors, {len(tensors)} tensors")
EOF
req GET "/v1/jobs/$BN/export?format=onnx&checkpoint=best"
want 200 "GET /v1/jobs/$BN/export?format=onnx"
cp "$BODY" "$WORK/bn.onnx"
# An ONNX file is a ModelProto: field 1 (ir_version, a varint) first, so byte 0x08; then the
# image's own onnx package checks it and names its inputs.
[ -s "$WORK/bn.onnx" ] && [ "$(head -c1 "$WORK/bn.onnx" | od -An -tx1 | tr -d ' ')" = 08 ] \
    || fail "the ONNX export does not start like a ModelProto"
dc exec -T api python -c '
import sys, onnx
m = onnx.load_from_string(sys.stdin.buffer.read())
onnx.checker.check_model(m)
print(f"onnx: {m.ByteSize()} bytes, opset {m.opset_import[0].version}, inputs",
      [i.name for i in m.graph.input], "- onnx.checker passes")' <"$WORK/bn.onnx" \
    || fail "onnx.checker rejects the export"

step "docker-compose restart worker in the middle of a $RESTART_EPOCHS-epoch job"
LONG="$(submit '{"name": "restart-me",
  "dataset": {"name": "concentric_circles", "n_samples": 20000, "noise": 0.1, "seed": 3},
  "network": {"layers": [
    {"type": "dense", "units": 16, "activation": "relu"},
    {"type": "batchnorm"},
    {"type": "dense", "units": 16, "activation": "relu"},
    {"type": "dense", "units": 1, "activation": "sigmoid"}]},
  "training": {"epochs": '"$RESTART_EPOCHS"', "batch_size": 32, "validation_split": 0.2, "seed": 1}}')"
log "job $LONG submitted"
deadline=$((SECONDS + 180))
while :; do
    req GET "/v1/jobs/$LONG"; want 200 "GET /v1/jobs/$LONG"
    [ "$(pj 'd["status"] == "running" and d["epoch"] >= 3')" = True ] && break
    [ "$(pj 'd["status"] in ("succeeded", "failed", "cancelled")')" = False ] \
        || fail "job $LONG ended ($(pj 'd["status"]')) before the restart"
    [ "$SECONDS" -lt "$deadline" ] || fail "job $LONG not 3 epochs in after 180 s"
    sleep 0.5
done
BEFORE="$(pj 'd["epoch"]')"
[ "$BEFORE" -lt "$((RESTART_EPOCHS - 5))" ] \
    || fail "the job is at epoch $BEFORE of $RESTART_EPOCHS: too fast to interrupt (raise BNLAB_SMOKE_RESTART_EPOCHS)"
log "running, epoch $BEFORE/$RESTART_EPOCHS: docker-compose restart worker"
t=$SECONDS
dc restart worker 2>&1 | tail -n 2
log "restart took $((SECONDS - t)) s"
req GET "/v1/jobs/$LONG"; want 200 "GET /v1/jobs/$LONG"
AFTER="$(pj 'd["epoch"]')"
log "after the restart: status $(pj 'd["status"]'), epoch $AFTER"
[ "$AFTER" -lt "$RESTART_EPOCHS" ] || fail "the job finished during the restart: nothing was interrupted"
dc logs --no-color worker | grep -i -E 'warm shutdown' | tail -n 1 | cut -c1-200 || true

step "the interrupted job resumes and succeeds, epochs 1..$RESTART_EPOCHS once each"
wait_job "$LONG" 600
check_history "$LONG" "$RESTART_EPOCHS"
# From its checkpoint, not from scratch: the new worker container says where it picked it up.
resumed="$(dc logs --no-color worker | grep -o "resuming job $LONG from epoch [0-9]*" | tail -n 1)"
[ -n "$resumed" ] || fail "no 'resuming job $LONG from epoch N' in the worker's log"
log "worker: $resumed"

step "docker-compose down, then up -d: jobs and histories still there"
dc down 2>&1 | tail -n 2
dc up -d 2>&1 | tail -n 2
wait_ready 180
for id in "$PLAIN" "$BN" "$LONG"; do
    req GET "/v1/jobs/$id"; want 200 "GET /v1/jobs/$id after down/up"
    check 'd["status"] == "succeeded"' "job $id is not succeeded after down/up"
done
check_history "$PLAIN" 200
check_history "$BN" 200
check_history "$LONG" "$RESTART_EPOCHS"
req GET "/v1/jobs/$BN/checkpoints/best"; want 200 "the checkpoint after down/up"
cmp -s "$BODY" "$WORK/bn.safetensors" || fail "the best checkpoint changed across down/up"
log "the best checkpoint is byte for byte the same"
CODE="$(curl -sS -o "$BODY" -w '%{http_code}' "$URL/v1/jobs/$BN")"
want 401 "GET /v1/jobs/$BN without the key, after up"
log "and still 401 without the key"

step_end
printf '\nPASSED: compose smoke test (%ds)\n' "$((SECONDS - T0))"
