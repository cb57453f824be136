-- wrk script: POST one image as multipart/form-data (part "file") and print the figures as JSON.
-- Usage: IMAGE=bench/canvas60.png [WRK_GET=1] wrk -s bench/wrk/multipart.lua -c16 -t2 -d10s --latency URL
local boundary = "glimpsebenchboundary7d3a"
local path = os.getenv("IMAGE") or "bench/canvas60.png"
local file = assert(io.open(path, "rb"))
local image = file:read("*a")
file:close()

if os.getenv("WRK_GET") then  -- a plain GET instead (a health route): what serving a request costs alone
  wrk.method = "GET"
else
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  wrk.body = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="file"; filename="canvas.png"\r\n'
    .. "Content-Type: image/png\r\n\r\n"
    .. image .. "\r\n--" .. boundary .. "--\r\n"
end

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
