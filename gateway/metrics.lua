-- The gateway's scrape endpoint: GET /metrics on the metrics listener, for Prometheus.
--
-- Why not publish the admin port: it can change state (the drain switch, runtime keys, log
-- levels, quitting), so it stays on loopback. This filter asks it for two read-only pages, its
-- statistics in Prometheus's format and its runtime values, and answers with the statistics
-- plus the gateway's own state as gauges:
--   llm_gateway_draining               1 while the drain switch (llm.draining) is on
--   llm_gateway_global_limits_enabled  1 while the gateway asks the rate-limit service
--                                      (llm.global_limits), labelled with that service and
--                                      the failure mode (llm.ratelimit_service,
--                                      llm.ratelimit_failure_mode)
-- Those runtime values are the config's own (its `enforced` layer, written by render.py) unless
-- the admin layer overrides them. render.py prepends ADMIN_CLUSTER.

local TIMEOUT_MS = 5000

local function admin_get(handle, path)
  local headers, body = handle:httpCall(ADMIN_CLUSTER, {
    [":method"] = "GET", [":path"] = path, [":authority"] = "envoy-admin"}, "", TIMEOUT_MS)
  if headers[":status"] ~= "200" then
    return nil
  end
  return body
end

-- A runtime key's value from the admin's /runtime JSON (its final value), or the default
-- when the key is absent.
local function runtime_value(runtime, key, default)
  local escaped = key:gsub("%.", "%%.")
  local value = runtime:match('"' .. escaped .. '"%s*:%s*{[^}]-"final_value"%s*:%s*"([^"]*)"')
  return value or default
end

local function gauge(name, help, labels, value)
  return "# HELP " .. name .. " " .. help .. "\n# TYPE " .. name .. " gauge\n" ..
      name .. labels .. " " .. value .. "\n"
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = (headers:get(":path") or ""):gsub("%?.*", "")
  if headers:get(":method") ~= "GET" or path ~= "/metrics" then
    handle:respond({[":status"] = "404", ["content-type"] = "text/plain"},
                   "only GET /metrics is served on this port\n")
    return
  end
  local stats = admin_get(handle, "/stats/prometheus")
  local runtime = admin_get(handle, "/runtime")
  if stats == nil or runtime == nil then
    handle:respond({[":status"] = "503", ["content-type"] = "text/plain"},
                   "the gateway's admin endpoint did not answer\n")
    return
  end
  local draining = (tonumber(runtime_value(runtime, "llm.draining", "0")) or 0) >= 100
      and 1 or 0
  local limits = (tonumber(runtime_value(runtime, "llm.global_limits", "0")) or 0) > 0
      and 1 or 0
  local state =
      gauge("llm_gateway_draining", "1 while the gateway drains: new requests get 503.",
            "", draining) ..
      gauge("llm_gateway_global_limits_enabled",
            "1 while the gateway enforces the shared limits of the rate-limit service.",
            '{ratelimit_service="' .. runtime_value(runtime, "llm.ratelimit_service", "none") ..
                '",failure_mode="' .. runtime_value(runtime, "llm.ratelimit_failure_mode", "open")
                .. '"}', limits)
  handle:respond({[":status"] = "200",
                  ["content-type"] = "text/plain; version=0.0.4; charset=utf-8"},
                 stats .. state)
end
