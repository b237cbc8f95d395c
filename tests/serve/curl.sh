#!/usr/bin/env bash
# tests/serve/curl.sh — `tinyllm serve` driven with curl, as a shell user would:
#
#     curl.sh TINYLLM MODEL_DIR [DEVICE]
#
# health, the model list, a completion and a chat completion (their JSON
# shape), a streamed completion (server-sent events ending in [DONE]), a seeded
# sampled completion equal to what `tinyllm generate` prints for the same prompt,
# temperature, top-k and seed on the same device (when python3 is there to read
# the JSON), the OpenAI-shaped errors (bad JSON, a bad field, an unknown route
# or model), a request whose sampling fails ending alone, a stop string, /metrics
# in Prometheus text counting each ending, and a clean stop on SIGTERM. DEVICE (cpu, the
# default, or cuda) is where both the server and generate run. Exit 1 on the
# first failure, with what was received.
set -euo pipefail
tinyllm=$1 model=$2 device=${3:-cpu}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

"$tinyllm" serve --model "$model" --device "$device" --port 0 --max-batch 4 > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 100); do
  grep -q "http://" "$work/out" 2>/dev/null && break
  sleep 0.1
done
base=$(grep -o "http://[0-9.]*:[0-9]*" "$work/out") || { cat "$work/out" "$work/err"; exit 1; }
name=$(sed -n "s/.*model '\([^']*\)'.*/\1/p" "$work/out")
echo "server at $base, model '$name'"

fail() { echo "FAIL: $1"; echo "--- received:"; cat "$work/body"; echo; exit 1; }
# request METHOD PATH [JSON]: the body into $work/body, the HTTP status printed.
request() {
  local data=()
  [ $# -ge 3 ] && data=(-H "Content-Type: application/json" --data "$3")
  curl -sS -o "$work/body" -w "%{http_code}" -X "$1" "${data[@]}" "$base$2"
}

[ "$(request GET /health)" = 200 ] && grep -q '"status":"ok"' "$work/body" || fail "/health"
echo "ok:   /health"
[ "$(request GET /v1/models)" = 200 ] && grep -q "\"id\":\"$name\"" "$work/body" || fail "/v1/models"
echo "ok:   /v1/models"

status=$(request POST /v1/completions "{\"model\":\"$name\",\"prompt\":\"In the beginning\",\"max_tokens\":6,\"temperature\":0}")
[ "$status" = 200 ] && grep -q '"object":"text_completion"' "$work/body" &&
  grep -q '"completion_tokens":6' "$work/body" || fail "completion"
echo "ok:   completion: $(cat "$work/body")"

status=$(request POST /v1/completions "{\"model\":\"$name\",\"prompt\":[1,2,3],\"max_tokens\":3,\"temperature\":0}")
[ "$status" = 200 ] && grep -q '"prompt_tokens":3' "$work/body" || fail "completion from token ids"
echo "ok:   completion from token ids"

status=$(request POST /v1/chat/completions "{\"model\":\"$name\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":5,\"temperature\":0}")
[ "$status" = 200 ] && grep -q '"object":"chat.completion"' "$work/body" &&
  grep -q '"message":{"role":"assistant","content":' "$work/body" || fail "chat completion"
echo "ok:   chat completion"

curl -sS -N -H "Content-Type: application/json" -o "$work/body" \
  --data "{\"model\":\"$name\",\"prompt\":\"And God said\",\"max_tokens\":5,\"temperature\":0,\"stream\":true}" \
  "$base/v1/completions"
[ "$(grep -c '^data: {' "$work/body")" -ge 2 ] && [ "$(tail -n 2 "$work/body" | head -n 1)" = "data: [DONE]" ] &&
  grep -q '"finish_reason":"length"' "$work/body" || fail "streamed completion"
echo "ok:   streamed completion ($(grep -c '^data: ' "$work/body") events)"

# A seeded sampled completion: the tokens `tinyllm generate` gives alone, with the same sampler and seed.
if command -v python3 > /dev/null; then
  status=$(request POST /v1/completions "{\"model\":\"$name\",\"prompt\":\"In the beginning\",\"max_tokens\":8,\"temperature\":0.8,\"top_k\":20,\"seed\":7}")
  [ "$status" = 200 ] || fail "seeded sampled completion"
  served=$(python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["choices"][0]["text"])' < "$work/body")
  alone=$("$tinyllm" generate --device "$device" --model "$model" --prompt "In the beginning" --max-new-tokens 8 \
            --temperature 0.8 --top-k 20 --seed 7)
  [ "$alone" = "In the beginning$served" ] || { echo "generate printed: $alone"; fail "seeded sampled completion: not what generate prints"; }
  echo "ok:   seeded sampled completion, as generate --device $device: $(cat "$work/body")"
else
  echo "skip: seeded sampled completion (no python3 to read the JSON)"
fi

[ "$(request POST /v1/completions '{"model": ')" = 400 ] && grep -q '"type":"invalid_request_error"' "$work/body" &&
  grep -q "not valid JSON" "$work/body" || fail "bad JSON: 400"
echo "ok:   bad JSON: $(cat "$work/body")"
[ "$(request POST /v1/completions "{\"model\":\"$name\",\"prompt\":\"x\",\"top_k\":0}")" = 400 ] &&
  grep -q '"param":"top_k"' "$work/body" || fail "top_k 0: 400"
echo "ok:   top_k = 0: $(cat "$work/body")"
[ "$(request POST /v1/chat/completions "{\"model\":\"$name\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}")" = 400 ] &&
  grep -q "messages\[0\].role" "$work/body" || fail "bad role: 400"
echo "ok:   bad role: 400"
# Chat fields that would change the reply are refused by name, not ignored; their defaults pass.
chat() { request POST /v1/chat/completions "{\"model\":\"$name\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],$1}"; }
[ "$(chat '"tools":[{"type":"function","function":{"name":"f"}}]')" = 400 ] && grep -q '"param":"tools"' "$work/body" ||
  fail "chat with tools: 400"
[ "$(chat '"response_format":{"type":"json_object"}')" = 400 ] && grep -q '"param":"response_format"' "$work/body" ||
  fail "chat with response_format json_object: 400"
[ "$(chat '"tool_choice":"required"')" = 400 ] && grep -q '"param":"tool_choice"' "$work/body" ||
  fail "chat with tool_choice required: 400"
[ "$(chat '"max_tokens":0')" = 400 ] && grep -q '"param":"max_tokens"' "$work/body" || fail "chat with max_tokens 0: 400"
[ "$(chat '"max_tokens":1,"tools":[],"tool_choice":"none","response_format":{"type":"text"}')" = 200 ] ||
  fail "chat with the default tools and response_format: 200"
echo "ok:   chat: tools, tool_choice, response_format and max_tokens 0 refused; their defaults accepted"
[ "$(request GET /v1/nothing)" = 404 ] && grep -q "no route GET /v1/nothing" "$work/body" || fail "unknown route: 404"
echo "ok:   unknown route: 404"
[ "$(request GET /v1/completions)" = 405 ] && grep -q "GET /v1/completions is not allowed; use POST" "$work/body" ||
  fail "GET /v1/completions: 405"
echo "ok:   a known route with the other method: 405"
# A body past 8192 bytes sent without Content-Type: JSON is read as a form by cpp-httplib and
# refused (413) before any handler: the error says why in words.
big=$(head -c 9000 /dev/zero | tr '\0' x)
status=$(curl -sS -o "$work/body" -w "%{http_code}" --data "{\"model\":\"$name\",\"prompt\":\"$big\"}" "$base/v1/completions")
[ "$status" = 413 ] && grep -q "send the JSON with that header" "$work/body" || fail "a large form-encoded body: 413 in words"
echo "ok:   a large body without Content-Type: 413, said in words"

[ "$(request GET "/v1/models/$name")" = 200 ] && grep -q "^{\"id\":\"$name\",\"object\":\"model\"" "$work/body" ||
  fail "/v1/models/ID"
[ "$(request GET /v1/models/no-such-model)" = 404 ] && grep -q '"code":"model_not_found"' "$work/body" ||
  fail "/v1/models/ID of another model: 404"
echo "ok:   /v1/models/ID, and 404 for another"
# The model is checked before the other fields: another model's name with an empty prompt is a 404.
[ "$(request POST /v1/completions '{"model":"no-such-model","prompt":""}')" = 404 ] &&
  grep -q '"code":"model_not_found"' "$work/body" || fail "unknown model before the empty prompt: 404"
echo "ok:   unknown model, empty prompt: 404"
# A byte that is not UTF-8 in bad JSON: the error names it as 0xFF and the reply stays valid UTF-8.
status=$(printf '\xff{}' | curl -sS -o "$work/body" -w "%{http_code}" -H "Content-Type: application/json" \
           --data-binary @- "$base/v1/completions")
[ "$status" = 400 ] && grep -q "unexpected character 0xFF" "$work/body" && iconv -f UTF-8 -t UTF-8 "$work/body" > /dev/null ||
  fail "a non-UTF-8 byte in bad JSON: 400 in valid UTF-8"
echo "ok:   non-UTF-8 byte in bad JSON: $(cat "$work/body")"
# A temperature too small for a float is refused by name; a small one that overflows a logit
# (1e-37 with a bias of 100) fails that request alone (400), while a streamed request beside it
# runs to its end.
[ "$(request POST /v1/completions "{\"model\":\"$name\",\"prompt\":\"x\",\"temperature\":1e-45}")" = 400 ] &&
  grep -q '"param":"temperature"' "$work/body" || fail "temperature 1e-45: 400"
curl -sS -N -H "Content-Type: application/json" -o "$work/beside" \
  --data "{\"model\":\"$name\",\"prompt\":\"And God said\",\"max_tokens\":60,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}" \
  "$base/v1/completions" &
beside=$!
[ "$(request POST /v1/completions "{\"model\":\"$name\",\"prompt\":\"x\",\"max_tokens\":4,\"temperature\":1e-37,\"logit_bias\":{\"5\":100}}")" = 400 ] &&
  grep -q "overflows to +inf" "$work/body" || fail "a request whose sampling overflows: 400"
wait $beside
[ "$(tail -n 2 "$work/beside" | head -n 1)" = "data: [DONE]" ] && grep -q '"finish_reason":"length"' "$work/beside" ||
  { cp "$work/beside" "$work/body"; fail "the request beside a failing one: not run to its end"; }
echo "ok:   a request whose sampling overflows fails alone: $(cat "$work/body")"
# A stop string ends a request as "stop", in the reply and in /metrics (not as cancelled).
# The stop string is the first character of the model's own greedy reply (the small model
# is trained on a docs page, so its text changes with the page), hence certain to come.
greedy="{\"model\":\"$name\",\"prompt\":\"In the beginning\",\"max_tokens\":40,\"temperature\":0,\"ignore_eos\":true"
stop='"e","r"," ","\n"'
if command -v python3 > /dev/null; then
  [ "$(request POST /v1/completions "$greedy}")" = 200 ] || fail "greedy completion"
  stop=$(python3 -c 'import json, sys; t = json.load(sys.stdin)["choices"][0]["text"]; sys.stdout.write(json.dumps(t[:1] or " "))' < "$work/body")
fi
[ "$(request POST /v1/completions "$greedy,\"stop\":[$stop]}")" = 200 ] &&
  grep -q '"finish_reason":"stop"' "$work/body" || fail "stop string: finish_reason stop"
echo "ok:   stop string"

[ "$(request GET /metrics)" = 200 ] && grep -q "^tinyllm_requests_running 0$" "$work/body" &&
  grep -q "^# TYPE tinyllm_generation_tokens_total counter$" "$work/body" &&
  grep -q '^tinyllm_requests_finished_total{reason="length"} [1-9]' "$work/body" &&
  grep -q '^tinyllm_requests_finished_total{reason="stop"} 1$' "$work/body" &&
  grep -q '^tinyllm_requests_finished_total{reason="cancelled"} 0$' "$work/body" &&
  grep -q '^tinyllm_requests_finished_total{reason="error"} 1$' "$work/body" || fail "/metrics"
echo "ok:   /metrics"

# SIGTERM while a long stream runs: the stream ends at once with a "shutting down" error
# event, and the server exits 0 (it had waited for the stream to finish).
curl -sS -N -H "Content-Type: application/json" -o "$work/long" \
  --data "{\"model\":\"$name\",\"prompt\":\"And God said\",\"max_tokens\":1500,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}" \
  "$base/v1/completions" &
long=$!
for _ in $(seq 100); do [ "$(grep -c '^data: ' "$work/long" 2>/dev/null)" -ge 3 ] && break; sleep 0.1; done
kill -TERM $pid
rc=0; wait $pid || rc=$?
[ "$rc" = 0 ] || { cat "$work/err"; echo "FAIL: exit $rc after SIGTERM"; exit 1; }
wait $long || true
grep -q "the server is shutting down" "$work/long" || { cp "$work/long" "$work/body"; fail "SIGTERM: the running stream was not ended"; }
echo "ok:   SIGTERM with a stream running: the stream ends, exit 0"
echo "all checks passed"
