-- wrk script: POST one prepared Open Inference Protocol infer request (Triton's binary tensor data
-- extension: JSON header, then the tensors) and print the figures as JSON, as multipart.lua does.
-- Usage: BODY=request.bin HEADER_LENGTH=123 wrk -s bench/wrk/v2.lua -c16 -t2 -d10s --latency URL
-- (python -m bench.v2_head_to_head writes the body with tritonclient's own request builder).
local file = assert(io.open(assert(os.getenv("BODY"), "BODY is not set"), "rb"))
wrk.body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = assert(os.getenv("HEADER_LENGTH"), "HEADER_LENGTH is not set")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, "errors_connect": %d, '
      .. '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
