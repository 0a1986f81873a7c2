-- What every generation answer reports, read as it streams past (nothing is buffered): its
-- token counts and where its time went (queue, prefill, decode). The access log writes them,
-- the rate-limit service counts them per key, and the token quotas settle to them.
--
-- Requests: a generation route is marked in dynamic metadata `llm.usage.route` ("json" for
-- the generate, infer and OpenAI routes, "grpc" for gRPC inference), which token_budget.lua
-- reads too. Answers: the last value of each field seen goes to dynamic metadata:
-- `llm.usage` `prompt_tokens`, `completion_tokens` and their sum `tokens` (and `model`, the
-- first `model` an OpenAI answer names: the adapter it ran, or the base); `llm.timing` with
-- each name of TIMINGS. They are in a sequence's last response: JSON fields (Triton's
-- outputs, the OpenAI frontend's usage and `llm_timing`), or on gRPC the output tensors of
-- the protobuf messages, read by the small decoder below (only messages that name a timing
-- are decoded). An error answer used no tokens. render.py prepends TIMINGS
-- (contracts/tensors.py).

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

local COUNTS = {num_input_tokens = "prompt_tokens", num_output_tokens = "completion_tokens"}

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
    local metadata = handle:streamInfo():dynamicMetadata()
    metadata:set("llm.usage", "route", route)
    if path:find("ModelStreamInfer", 1, true) then metadata:set("llm.usage", "stream", "1") end
    -- OpenAI answers name the model (or adapter) they ran: the access log's `model`.
    if path:find("^/v1/") then metadata:set("llm.usage", "openai", "1") end
  end
end

-- ---- gRPC: KServe's protobuf messages (grpc_service.proto), decoded just enough ----------

-- A varint at `i`: its value and the index after it (nil past the end).
local function varint(data, i)
  local value, scale = 0, 1
  while true do
    local byte = data:byte(i)
    if byte == nil then return nil, nil end
    value = value + (byte % 128) * scale
    i = i + 1
    if byte < 128 then return value, i end
    scale = scale * 128
  end
end

-- The fields of the message in data[first..last]: a list of {number, wire type, value}, where
-- a length-delimited value is its {start, stop} and others are skipped.
local function fields(data, first, last)
  local found, i = {}, first
  while i <= last do
    local key, at = varint(data, i)
    if key == nil then break end
    local number, wire = math.floor(key / 8), key % 8
    if wire == 0 then
      local _, after = varint(data, at)
      i = after
    elseif wire == 2 then
      local size, start = varint(data, at)
      if size == nil then break end
      found[#found + 1] = {number, start, start + size - 1}
      i = start + size
    elseif wire == 5 then i = at + 4
    elseif wire == 1 then i = at + 8
    else break end
    if i == nil then break end
  end
  return found
end

local function int32(data, i)
  local b1, b2, b3, b4 = data:byte(i, i + 3)
  local value = ((b4 * 256 + b3) * 256 + b2) * 256 + b1
  return value >= 2147483648 and value - 4294967296 or value
end

local function float32(data, i)
  local b1, b2, b3, b4 = data:byte(i, i + 3)
  local sign = b4 >= 128 and -1 or 1
  local exponent = (b4 % 128) * 2 + math.floor(b3 / 128)
  local mantissa = ((b3 % 128) * 256 + b2) * 256 + b1
  if exponent == 0 then return sign * mantissa * 2 ^ -149 end
  return sign * (1 + mantissa / 8388608) * 2 ^ (exponent - 127)
end

-- The outputs of a ModelInferResponse in data[first..last] that this filter reads: output
-- `name` (field 5, its own field 1) pairs with raw_output_contents (field 6) by position.
local function infer_outputs(data, first, last)
  local names, contents, values = {}, {}, {}
  for _, field in ipairs(fields(data, first, last)) do
    if field[1] == 5 then
      for _, inner in ipairs(fields(data, field[2], field[3])) do
        if inner[1] == 1 then names[#names + 1] = data:sub(inner[2], inner[3]) end
      end
    elseif field[1] == 6 then
      contents[#contents + 1] = field[2]
    end
  end
  for index, name in ipairs(names) do
    local at = contents[index]
    if at ~= nil and COUNTS[name] ~= nil then values[COUNTS[name]] = int32(data, at) end
    if at ~= nil and TIMING_NAMES[name] then values[name] = float32(data, at) end
  end
  return values
end

-- One gRPC message: a ModelStreamInferResponse (its infer_response is field 2) or, unary, a
-- ModelInferResponse.
local function grpc_values(message, streamed)
  if not streamed then return infer_outputs(message, 1, #message) end
  for _, field in ipairs(fields(message, 1, #message)) do
    if field[1] == 2 then return infer_outputs(message, field[2], field[3]) end
  end
  return {}
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

-- Record what an answer reported (counts and timings, by the names of `values`).
local function note(handle, values)
  local metadata = handle:streamInfo():dynamicMetadata()
  local input, output = values.prompt_tokens, values.completion_tokens
  if input ~= nil or output ~= nil then
    metadata:set("llm.usage", "tokens", tostring((input or 0) + (output or 0)))
    metadata:set("llm.usage", "prompt_tokens", tostring(input or 0))
    metadata:set("llm.usage", "completion_tokens", tostring(output or 0))
  end
  for _, name in ipairs(TIMINGS) do
    if values[name] ~= nil then
      metadata:set("llm.timing", name, string.format("%.2f", values[name]))
    end
  end
end

-- gRPC answers: whole messages (5-byte frame, then the message) are cut from the chunks; the
-- ones naming a timing (a sequence's last) are decoded.
local function read_grpc(handle, streamed)
  local pending = ""
  for chunk in handle:bodyChunks() do
    pending = pending .. chunk:getBytes(0, chunk:length())
    while #pending >= 5 do
      local b1, b2, b3, b4 = pending:byte(2, 5)
      local size = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      if #pending < 5 + size then break end
      local message = pending:sub(6, 5 + size)
      pending = pending:sub(6 + size)
      -- (compressed messages, flag 1, are not read)
      if message:find(TIMINGS[1], 1, true) then
        note(handle, grpc_values(message, streamed))
      end
    end
  end
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
  if usage == nil or usage.route == nil then return end
  if usage.route == "grpc" then
    if (handle:headers():get("content-type") or ""):find("^application/grpc") then
      read_grpc(handle, usage.stream == "1")
    end
    return
  end
  local status = tonumber(handle:headers():get(":status") or "") or 0
  if status >= 400 then handle:streamInfo():dynamicMetadata():set("llm.usage", "tokens", "0") end
  local tail, seen = "", {}
  local model_wanted = usage.openai == "1"
  for chunk in handle:bodyChunks() do
    -- The end of the previous chunk too: a field may straddle two chunks.
    local text = tail .. chunk:getBytes(0, chunk:length())
    if model_wanted then
      local model = text:match('"model"%s*:%s*"([^"\\]*)"')
      if model ~= nil then
        handle:streamInfo():dynamicMetadata():set("llm.usage", "model", model)
        model_wanted = false
      end
    end
    -- Most chunks are text only: look closer only where a count or a timing may be.
    if text:find("_tokens", 1, true) or text:find("_ms", 1, true) then
      -- (objects taken before a yield are stale after it: note() asks again)
      seen.prompt_tokens = first_value(text, {"num_input_tokens", "prompt_tokens"})
          or seen.prompt_tokens
      seen.completion_tokens = first_value(text, {"num_output_tokens", "completion_tokens"})
          or seen.completion_tokens
      for _, name in ipairs(TIMINGS) do seen[name] = last_value(text, name) or seen[name] end
      note(handle, seen)
    end
    tail = text:sub(-96)
  end
end
