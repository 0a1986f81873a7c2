-- What every generation answer reports, read as it streams past (nothing is buffered): its
-- token counts and where its time went (queue, prefill, decode). The access log writes them,
-- the rate-limit service counts them per key, and the token quotas settle to them.
--
-- Requests: a generation route is marked in dynamic metadata `llm.usage.route` ("json" for
-- the generate, infer and OpenAI routes, "grpc" for gRPC inference), which token_budget.lua
-- reads too. Answers of JSON routes: the last value of each field seen in the body goes to
-- dynamic metadata: `llm.usage` `prompt_tokens`, `completion_tokens` and their sum `tokens`;
-- `llm.timing` with each name of TIMINGS. They are in a sequence's last response (Triton's
-- outputs; the OpenAI frontend's usage and `llm_timing`). An error answer used no tokens.
-- gRPC bodies are protobuf and are not read: the model's own log line has the same figures
-- under the request id. render.py prepends TIMINGS (contracts/tensors.py).

local JSON_GENERATION = {
  "^/generate$", "^/generate_stream$",
  "^/v2/models/llm[_%w]*/generate$", "^/v2/models/llm[_%w]*/generate_stream$",
  "^/v2/models/llm[_%w]*/versions/%d+/generate$",
  "^/v2/models/llm[_%w]*/versions/%d+/generate_stream$",
  "^/v2/models/llm/infer$", "^/v2/models/llm/versions/%d+/infer$",
  "^/v1/completions$", "^/v1/chat/completions$",
}
local GRPC_GENERATION = {
  ["/inference.GRPCInferenceService/ModelInfer"] = true,
  ["/inference.GRPCInferenceService/ModelStreamInfer"] = true,
}

local function matches_any(path, patterns)
  for _, pattern in ipairs(patterns) do
    if path:find(pattern) then return true end
  end
  return false
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get(":method") ~= "POST" then return end
  local path = (headers:get(":path") or ""):gsub("%?.*$", "")
  local route = GRPC_GENERATION[path] and "grpc"
      or (matches_any(path, JSON_GENERATION) and "json") or nil
  if route ~= nil then
    handle:streamInfo():dynamicMetadata():set("llm.usage", "route", route)
  end
end

-- The last number given for `name` in `text`: as a JSON field (generate, OpenAI) or as an
-- output tensor of Triton's infer JSON.
local function last_value(text, name)
  local found
  for value in text:gmatch('"' .. name .. '"%s*:%s*([%d%.]+)') do found = value end
  if found == nil then
    for value in text:gmatch('"name"%s*:%s*"' .. name .. '"[^}]-"data"%s*:%s*%[%s*([%d%.]+)') do
      found = value
    end
  end
  return tonumber(found or "")
end

local function first_value(text, names)
  for _, name in ipairs(names) do
    local value = last_value(text, name)
    if value ~= nil then return value end
  end
  return nil
end

function envoy_on_response(handle)
  local usage = handle:streamInfo():dynamicMetadata():get("llm.usage")
  if usage == nil or usage.route ~= "json" then return end
  if (handle:headers():get("content-type") or ""):find("^application/grpc") then return end
  local status = tonumber(handle:headers():get(":status") or "") or 0
  if status >= 400 then handle:streamInfo():dynamicMetadata():set("llm.usage", "tokens", "0") end
  local input, output, timings, tail = nil, nil, {}, ""
  for chunk in handle:bodyChunks() do
    -- The end of the previous chunk too: a field may straddle two chunks.
    local text = tail .. chunk:getBytes(0, chunk:length())
    -- Most chunks are text only: look closer only where a count or a timing may be.
    if text:find("_tokens", 1, true) or text:find("_ms", 1, true) then
      input = first_value(text, {"num_input_tokens", "prompt_tokens"}) or input
      output = first_value(text, {"num_output_tokens", "completion_tokens"}) or output
      -- (objects taken before a yield are stale after it: ask again)
      local metadata = handle:streamInfo():dynamicMetadata()
      if input ~= nil or output ~= nil then
        metadata:set("llm.usage", "tokens", tostring((input or 0) + (output or 0)))
        metadata:set("llm.usage", "prompt_tokens", tostring(input or 0))
        metadata:set("llm.usage", "completion_tokens", tostring(output or 0))
      end
      for _, name in ipairs(TIMINGS) do
        local value = last_value(text, name)
        if value ~= nil and value ~= timings[name] then
          timings[name] = value
          metadata:set("llm.timing", name, tostring(value))
        end
      end
    end
    tail = text:sub(-96)
  end
end
