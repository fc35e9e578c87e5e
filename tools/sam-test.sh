#!/usr/bin/env bash
# make sam-test: the SAM path, proven offline.
#
#   1. sam validate --lint
#   2. sam build (rust-cargolambda, provided.al2023; cargo-lambda + zig from the venv)
#   3. if Docker can run here: start our own dockerd (docs/testing.md, "sam build and sam local invoke"), build
#      the Lambda base image from local files, start moto_server and the stand-in API on that
#      dockerd's bridge gateway address, and `sam local invoke` both functions with the files
#      in events/, checking what they did (tools/sam_test.py):
#        - splitter: a baseline upload sends nothing; the next export (casefeed gen) sends
#          exactly the generator's new + changed rows to the work queue;
#        - consumer, events/sqs-batch.json (good, undecodable, rejected by the API):
#          API down -> the two deliverable messages requeued as delayed copies (no batch item
#          failures: an outage uses no receives), the undecodable one dead-lettered; API up -> no failures, the good one applied, the rejected one
#          dead-lettered with 422; the same batch again -> still applied exactly once, and the
#          rejected one not dead-lettered a second time (one dead letter per lineage).
#   Everything started here is stopped on exit (trap).
#
# When dockerd cannot start (not root, no docker.io package, no kernel support) the script
# says so, skips step 3 and exits 0: validate and build still ran. Set
# SAM_TEST_REQUIRE_DOCKER=1 to make that a failure instead (.ci/run does).
#
# Needs: the venv from `make tools` (aws-sam-cli, cargo-lambda, ziglang, moto) and the release
# binaries from `make build` (casefeed, casefeed-api). Network: moto and the API listen only on
# the docker bridge gateway of the dockerd started here (a local interface of this machine); the
# containers reach nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
export PATH="$ROOT/$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=0
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
# moto's dummy credentials; `sam local invoke` passes these to the container.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
unset AWS_PROFILE AWS_SESSION_TOKEN
# sam build's cargo gets its own target dir: it builds for another target triple anyway, and
# so never waits for (or invalidates) the host build's lock in target/release.
export CARGO_TARGET_DIR=${SAM_CARGO_TARGET_DIR:-$ROOT/target/sam}

BASE_IMAGE=public.ecr.aws/lambda/provided:al2023-x86_64
MOTO_PORT=5000   # events/env.json: http://host.docker.internal:5000
API_PORT=8080    # events/env.json: http://host.docker.internal:8080
API_TOKEN=$(python3 -c 'import json;print(json.load(open("events/env.json"))["ConsumerFunction"]["API_TOKEN"])')
REJECTED_RECORD=LR-90000003   # the record of events/sqs-batch.json the stand-in API refuses (422)
GOOD_ID=5b0e7a3c-0001-4f6e-9a21-000000000001
REJECTED_ID=5b0e7a3c-0003-4f6e-9a21-000000000003
GOOD_KEY=3b8f0c2e9d4a41f6a7c5e1d2b3a49f01

step() { printf '\n== sam-test: %s\n' "$*"; }
die() { printf 'sam-test: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
T0=$(now)

WORK=$(mktemp -d /tmp/casefeed-sam-test.XXXXXX)
PIDS=()
DOCKERD_PID=
HAD_DOCKER0=yes
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [[ -n $DOCKERD_PID ]]; then
    # containers SAM left behind (it removes its own on a normal exit)
    ids=$(docker ps -aq 2>/dev/null); [[ -n $ids ]] && docker rm -f $ids >/dev/null 2>&1
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    # the vfs layers of the data root: unmount anything left, then delete
    grep -o " $WORK/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null
    # the bridge dockerd created (it leaves docker0 behind when it stops)
    [[ $HAD_DOCKER0 == no ]] && ip link delete docker0 2>/dev/null
  fi
  if [[ $rc -eq 0 || -z ${SAM_TEST_KEEP:-} ]]; then rm -rf "$WORK"; else echo "sam-test: kept $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in sam cargo-lambda moto_server; do
  command -v "$t" >/dev/null || die "$t is not in $VENV (run make tools)"
done
for b in casefeed casefeed-api; do
  [[ -x target/release/$b ]] || die "target/release/$b is missing (run make build)"
done

# ------------------------------------------------------------------ validate, build
step "sam validate --lint"
sam validate --lint --template template.yaml --region "$AWS_DEFAULT_REGION"

step "sam build (cargo-lambda $(cargo-lambda lambda --version 2>/dev/null | awk '{print $2}'), target dir ${CARGO_TARGET_DIR#$ROOT/})"
t=$(now)
sam build   # samconfig.toml [default.build]: parallel, not cached (see there why)
BUILD_SECS=$(( $(now) - t ))
for f in SplitterFunction ConsumerFunction; do
  [[ -x .aws-sam/build/$f/bootstrap ]] || die ".aws-sam/build/$f/bootstrap was not built"
done
echo "sam build: ${BUILD_SECS}s"

# ------------------------------------------------------------------ docker
docker_unavailable() {
  local why=$1
  echo
  echo "sam-test: *** DOCKER CANNOT RUN HERE: $why"
  echo "sam-test: *** sam local invoke was NOT tested; validate, lint and build passed (build ${BUILD_SECS}s)."
  if [[ ${SAM_TEST_REQUIRE_DOCKER:-0} == 1 ]]; then die "SAM_TEST_REQUIRE_DOCKER=1 and Docker cannot run"; fi
  exit 0
}

step "dockerd (own instance: socket, data root and exec root under $WORK)"
[[ $(id -u) == 0 ]] || docker_unavailable "dockerd needs root (this is uid $(id -u))"
if ! command -v dockerd >/dev/null || [[ ! -x /bin/busybox ]]; then
  command -v apt-get >/dev/null || docker_unavailable "no dockerd and no apt-get to install docker.io"
  echo "installing docker.io and busybox-static (Debian packages)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >"$WORK/apt.log" 2>&1 ||
         { apt-get update -qq >>"$WORK/apt.log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >>"$WORK/apt.log" 2>&1; }; }; then
    tail -5 "$WORK/apt.log"
    docker_unavailable "apt-get install docker.io busybox-static failed"
  fi
fi
export DOCKER_HOST=unix://$WORK/docker.sock
if ip link show docker0 >/dev/null 2>&1; then HAD_DOCKER0=yes; else HAD_DOCKER0=no; fi
dockerd --iptables=false --ip6tables=false --storage-driver=vfs \
  --host "$DOCKER_HOST" --data-root "$WORK/docker-root" --exec-root "$WORK/docker-exec" \
  --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || break
  sleep 0.5
done
if ! docker info >/dev/null 2>&1; then
  tail -5 "$WORK/dockerd.log"
  docker_unavailable "dockerd did not start (log above)"
fi
GW=$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)
[[ $GW =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || docker_unavailable "dockerd started but docker0 has no IPv4 address"
echo "dockerd $(docker version -f '{{.Server.Version}}' 2>/dev/null) up; bridge gateway $GW"

step "base image $BASE_IMAGE from local files (nothing is pulled)"
R=$WORK/rootfs
mkdir -p "$R"/bin "$R"/lib/x86_64-linux-gnu "$R"/lib64 "$R"/etc/ssl/certs "$R"/tmp "$R"/var/task "$R"/var/runtime
chmod 755 "$R"
cp /bin/busybox "$R"/bin/busybox
for a in sh mv chmod cp ls cat mkdir rm; do ln -s busybox "$R/bin/$a"; done
for l in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 libgcc_s.so.1 ld-linux-x86-64.so.2; do
  cp -L "/lib/x86_64-linux-gnu/$l" "$R"/lib/x86_64-linux-gnu/
done
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R"/lib64/ld-linux-x86-64.so.2
cp /etc/ssl/certs/ca-certificates.crt "$R"/etc/ssl/certs/
chmod 1777 "$R"/tmp
tar -C "$R" -cf "$WORK/root.tar" .
docker import "$WORK/root.tar" "$BASE_IMAGE" >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$BASE_IMAGE"

# ------------------------------------------------------------------ local AWS + API
step "moto_server and the stand-in API on $GW"
python tools/moto/serial_dynamodb.py -H "$GW" -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
API_LEDGER=$WORK/api-ledger.jsonl
target/release/casefeed-api --listen "$GW:$API_PORT" --allow-docker-bridge --token "$API_TOKEN" \
  --ledger "$API_LEDGER" --reject-record-key "$REJECTED_RECORD" --max-seconds 900 \
  >"$WORK/api.out" 2>"$WORK/api.log" &
PIDS+=($!)
export MOTO_URL=http://$GW:$MOTO_PORT API_URL=http://$GW:$API_PORT API_TOKEN API_LEDGER
for _ in $(seq 1 60); do
  curl -fsS "$MOTO_URL/moto-api/" >/dev/null 2>&1 && curl -fsS "$API_URL/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "$MOTO_URL/moto-api/" >/dev/null || { tail "$WORK/moto.log"; die "moto_server did not start on $GW:$MOTO_PORT"; }
curl -fsS "$API_URL/healthz" >/dev/null || { tail "$WORK/api.log"; die "casefeed-api did not start on $GW:$API_PORT"; }
CHECK="python tools/sam_test.py"
$CHECK setup

invoke() { # function event out
  local f=$1 ev=$2 out=$3 t
  t=$(now)
  # samconfig.toml [default.local_invoke] adds host.docker.internal:host-gateway, i.e. $GW
  if ! sam local invoke "$f" --event "$ev" --env-vars events/env.json --skip-pull-image \
        >"$out" 2>"$out.log"; then
    tail -40 "$out.log"
    die "sam local invoke $f -e $ev failed"
  fi
  grep -E '"level":"(WARN|ERROR)"' "$out.log" | head -5 || true
  echo "sam local invoke $f -e ${ev#$WORK/}: $(( $(now) - t ))s -> $(head -c 400 "$out")"
}

# ------------------------------------------------------------------ splitter
step "splitter: sam local invoke SplitterFunction (baseline, then the next export)"
target/release/casefeed gen baseline --rows 2000 --seed 5 --out "$WORK/export-0001.csv" >/dev/null
target/release/casefeed gen next --prev "$WORK/export-0001.csv" --out "$WORK/export-0002.csv" \
  --new 30 --changed 20 --removed 10 --seed 6 >/dev/null
$CHECK upload export-0001.csv "$WORK/export-0001.csv" "$WORK/s3-put-0001.json" --baseline
invoke SplitterFunction "$WORK/s3-put-0001.json" "$WORK/split-1.json"
$CHECK splitter "$WORK/split-1.json" "$WORK/export-0001.csv.expected.json" --status baseline
# the sample event itself, with the uploaded object's real ETag and size
$CHECK upload export-0002.csv "$WORK/export-0002.csv" "$WORK/s3-put-0002.json"
invoke SplitterFunction "$WORK/s3-put-0002.json" "$WORK/split-2.json"
$CHECK splitter "$WORK/split-2.json" "$WORK/export-0002.csv.expected.json" --status applied

# ------------------------------------------------------------------ consumer
check_consumer() { # out [sam_test.py consumer options]: on a failed check, the invocation's
  # own account of each message (retries with their kind and delay, fates) is printed too
  local out=$1
  shift
  if ! $CHECK consumer "$out" "$@"; then
    echo "--- the consumer's log lines about its messages ($(basename "$out").log):"
    grep -E '"(retry scheduled|message done|dead-lettered|outcome unknown[^"]*)"' "$out.log" | tail -40 || true
    die "the consumer's invocation $(basename "$out") did not do what was expected (above)"
  fi
}
step "consumer: sam local invoke ConsumerFunction -e events/sqs-batch.json (sent now)"
$CHECK batch "$WORK/sqs-batch.json"
echo "-- 1. the API is down (503): both deliverable messages are requeued for retry"
$CHECK control '{"outage_secs": 600}'
invoke ConsumerFunction "$WORK/sqs-batch.json" "$WORK/cons-1.json"
check_consumer "$WORK/cons-1.json" --requeued "$GOOD_ID,$REJECTED_ID" --applied 0 --rejected 0 --dlq undecodable
echo "-- 2. the API is up: the good one is applied, the rejected one dead-lettered (422)"
$CHECK control '{"outage_secs": 0}'
invoke ConsumerFunction "$WORK/sqs-batch.json" "$WORK/cons-2.json"
check_consumer "$WORK/cons-2.json" --applied 1 --applied-key "$GOOD_KEY" --rejected 1 --dlq permanent,undecodable
echo "-- 3. the same batch again (SQS delivers at least once): still applied exactly once, and"
echo "   the rejected one is not dead-lettered twice (one dead letter per lineage: the ledger has it)"
invoke ConsumerFunction "$WORK/sqs-batch.json" "$WORK/cons-3.json"
check_consumer "$WORK/cons-3.json" --applied 1 --applied-key "$GOOD_KEY" --rejected 2 --dlq undecodable

echo
echo "sam-test: all green (sam build ${BUILD_SECS}s, whole sam-test $(( $(now) - T0 ))s)"
