-- Prints one JSON line with the numbers bench/run.py needs (wrk's own text has no p99.9).
-- Optional: set WRK_METHOD / WRK_BODY through wrk's Lua `init` args: `-- POST '<json>'`.
init = function(args)
  if #args >= 2 then
    wrk.method = args[1]
    wrk.body = args[2]
    wrk.headers["Content-Type"] = "application/json"
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
