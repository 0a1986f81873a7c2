-- Token quotas: what a generation may cost on the way in, what it did cost on the way out.
-- The global rate-limit filter reserves the first from the key's tokens-per-minute budget
-- and settles to the second when the answer ends (ratelimit/contract.py).
--
-- Requests: a generation call gets `x-llm-token-reserve` = an upper bound on its tokens.
-- JSON bodies: the body's bytes (each prompt token is at least one byte) plus the
-- max_tokens it asks for (max_completion_tokens wins; the model's default when absent,
-- capped at its maximum) for each of the `n` sequences it asks for (at most MAX_CHOICES). gRPC calls are streams whose bodies are not read here: they
-- reserve the model's per-request maximum (prompt + new tokens). A client's own copy of the
-- header is dropped.
-- Answers: the last token counts seen in the body (Triton's num_input_tokens /
-- num_output_tokens, OpenAI's usage) go to dynamic metadata `llm.usage.tokens` (their sum,
-- which the quota settles to) and `prompt_tokens` / `completion_tokens` (the access logs and
-- the per-key usage) as the body streams past (nothing is buffered); an error answer without
-- counts used none. An answer
-- that reports no counts (gRPC, an OpenAI stream without include_usage) keeps its
-- reservation. Runs after auth.lua (which sets x-llm-key-id) and the body size limit.
-- DEFAULT_MAX_TOKENS, MAX_NEW_TOKENS and MAX_PROMPT_TOKENS are generated from the model's
-- config.pbtxt by render.py, MAX_CHOICES from contracts/tensors.py.

local RESERVE_HEADER = "x-llm-token-reserve"

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

local function json_reservation(handle)
  local body = handle:body()
  local text = body ~= nil and body:length() > 0 and body:getBytes(0, body:length()) or ""
  local asked = text:match('"max_completion_tokens"%s*:%s*(%d+)')
      or text:match('"max_tokens"%s*:%s*(%d+)')
  local new_tokens = math.min(tonumber(asked or "") or DEFAULT_MAX_TOKENS, MAX_NEW_TOKENS)
  local choices = math.max(1, math.min(tonumber(text:match('"n"%s*:%s*(%d+)') or "") or 1,
                                       MAX_CHOICES))
  return #text + new_tokens * choices
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(RESERVE_HEADER)
  if headers:get(":method") ~= "POST" or headers:get("x-llm-key-id") == nil then return end
  local path = (headers:get(":path") or ""):gsub("%?.*$", "")
  local reserve
  if GRPC_GENERATION[path] then
    reserve = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS
  elseif matches_any(path, JSON_GENERATION) then
    reserve = json_reservation(handle)
  else
    return
  end
  handle:headers():add(RESERVE_HEADER, tostring(reserve))  -- `headers` is stale after body()
  handle:streamInfo():dynamicMetadata():set("llm.usage", "reserved", tostring(reserve))
end

-- The last count of each kind in `text` (nil when absent).
local function last_count(text, patterns)
  local found
  for _, pattern in ipairs(patterns) do
    for value in text:gmatch(pattern) do found = tonumber(value) end
    if found ~= nil then return found end
  end
  return nil
end

local INPUT = {'"num_input_tokens"%s*:%s*(%d+)', '"prompt_tokens"%s*:%s*(%d+)',
               '"name"%s*:%s*"num_input_tokens"[^}]-"data"%s*:%s*%[%s*(%d+)'}
local OUTPUT = {'"num_output_tokens"%s*:%s*(%d+)', '"completion_tokens"%s*:%s*(%d+)',
                '"name"%s*:%s*"num_output_tokens"[^}]-"data"%s*:%s*%[%s*(%d+)'}

function envoy_on_response(handle)
  local metadata = handle:streamInfo():dynamicMetadata()
  local usage = metadata:get("llm.usage")
  if usage == nil or usage.reserved == nil then return end
  if (handle:headers():get("content-type") or ""):find("^application/grpc") then return end
  local status = tonumber(handle:headers():get(":status") or "") or 0
  if status >= 400 then metadata:set("llm.usage", "tokens", "0") end
  local input, output, tail = nil, nil, ""
  for chunk in handle:bodyChunks() do
    -- The end of the previous chunk too: a count may straddle two chunks.
    local text = tail .. chunk:getBytes(0, chunk:length())
    input = last_count(text, INPUT) or input
    output = last_count(text, OUTPUT) or output
    if input ~= nil or output ~= nil then
      -- (objects taken before a yield are stale after it: ask again)
      local counts = handle:streamInfo():dynamicMetadata()
      counts:set("llm.usage", "tokens", tostring((input or 0) + (output or 0)))
      counts:set("llm.usage", "prompt_tokens", tostring(input or 0))
      counts:set("llm.usage", "completion_tokens", tostring(output or 0))
    end
    tail = text:sub(-96)
  end
end
