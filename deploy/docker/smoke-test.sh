#!/usr/bin/env bash
# Builds the `kiln` image (deploy/docker/Dockerfile) and checks that a container of it serves:
# a model repository with the bundled example model (examples/tiny_cnn.onnx, built on load) is
# mounted read-only at /models as the Helm chart mounts it; the container must become ready on
# /v2/health/ready, answer /v2 and the model's metadata, run an inference over HTTP with JSON
# tensors (10 probabilities summing to 1), run as user 1000, and exit 0 on SIGTERM (docker stop)
# after draining.
#
#   deploy/docker/smoke-test.sh            (from anywhere; needs a running Docker daemon)
#
# Environment: IMAGE (default kiln:0.1.0), BUILD=0 to use an existing image, PORT (default 18000).
# Without a Docker daemon it says so and exits 0 (CI machines have none; see docs/kubernetes.md).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${IMAGE:-kiln:0.1.0}"
PORT="${PORT:-18000}"
if ! docker info >/dev/null 2>&1; then
  echo "smoke-test: skipped: no Docker daemon here (docker info failed)"
  exit 0
fi
if [ "${BUILD:-1}" != 0 ]; then
  echo "smoke-test: docker build -f deploy/docker/Dockerfile -t $IMAGE ."
  docker build -f "$repo/deploy/docker/Dockerfile" -t "$IMAGE" "$repo"
fi
work="$(mktemp -d)"
name="kiln-smoke-$$"
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/models/tiny_cnn/1"
cp "$repo/examples/tiny_cnn.onnx" "$work/models/tiny_cnn/1/model.onnx"
printf '%s\n' 'max_batch_size: 8' 'dynamic_batching { max_queue_delay_microseconds: 500 }' \
  'instance_group [ { count: 1 kind: KIND_CPU } ]' > "$work/models/tiny_cnn/config.pbtxt"
chmod -R a+rX "$work"

docker run -d --name "$name" -p "127.0.0.1:$PORT:8000" -v "$work/models:/models:ro" "$IMAGE" >/dev/null
fail() {
  echo "smoke-test: FAIL: $*" >&2
  docker logs "$name" 2>&1 | tail -30 >&2
  exit 1
}
url="http://127.0.0.1:$PORT"
ready=0
for _ in $(seq 1 120); do
  if curl -fsS "$url/v2/health/ready" >/dev/null 2>&1; then ready=1; break; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited before it was ready"
  sleep 1
done
[ "$ready" = 1 ] || fail "not ready within 120 s"
echo "smoke-test: ready"
server=$(curl -fsS "$url/v2") || fail "GET /v2"
echo "$server" | grep -q '"name"' || fail "GET /v2 has no name: $server"
meta=$(curl -fsS "$url/v2/models/tiny_cnn") || fail "GET /v2/models/tiny_cnn"
echo "$meta" | grep -q '"image"' || fail "the model's metadata does not list its input: $meta"
body=$(python3 -c 'import json; print(json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]}))')
answer=$(curl -fsS -H 'Content-Type: application/json' -d "$body" "$url/v2/models/tiny_cnn/infer") || fail "POST infer"
python3 - "$answer" <<'EOF' || fail "the inference's answer: $answer"
import json, sys
out = json.loads(sys.argv[1])["outputs"][0]
assert out["name"] == "probabilities", out["name"]
assert out["shape"] == [1, 10], out["shape"]
total = sum(out["data"])
assert abs(total - 1.0) < 1e-4, total
print("smoke-test: inference: 10 probabilities, sum %.6f" % total)
EOF
uid=$(docker exec "$name" id -u) || fail "docker exec id -u"
[ "$uid" = 1000 ] || fail "the server runs as user $uid, not 1000"
echo "smoke-test: runs as user $uid"
docker stop -t 30 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
docker logs "$name" 2>&1 | tail -3
echo "smoke-test: PASS ($IMAGE: ready, metadata, inference, user 1000, clean exit on SIGTERM)"
