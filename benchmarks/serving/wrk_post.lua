-- wrk script for the neocloud serving benchmark.
-- Sends POST requests whose JSON body is read from the file named by NEOCLOUD_BENCH_BODY
-- (headers from NEOCLOUD_BENCH_AUTH when set) and prints one line
-- "WRK_RESULT {...}" with counts and latency percentiles in microseconds.
local path = os.getenv("NEOCLOUD_BENCH_BODY")
local fh = assert(io.open(path, "rb"))
local payload = fh:read("*a")
fh:close()

wrk.method = "POST"
wrk.body = payload
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("NEOCLOUD_BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
  local err = summary.errors
  io.write("WRK_RESULT {")
  io.write(string.format('"requests":%d,"duration_us":%d,', summary.requests, summary.duration))
  io.write(string.format('"connect_errors":%d,"read_errors":%d,"write_errors":%d,',
    err.connect, err.read, err.write))
  io.write(string.format('"status_errors":%d,"timeouts":%d,', err.status, err.timeout))
  io.write(string.format('"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f',
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
  io.write("}\n")
end
