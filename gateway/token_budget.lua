-- Token quotas: what a generation may cost on the way in, what it did cost on the way out.
-- The global rate-limit filter reserves the first from the key's tokens-per-minute budget
-- and settles to the second when the answer ends (ratelimit/contract.py).
--
-- Requests: a generation call gets `x-llm-token-reserve` = an upper bound on its tokens.
-- JSON bodies: the body's bytes (each prompt token is at least one byte) plus the
-- max_tokens it asks for (max_completion_tokens wins; the model's default when absent,
-- capped at its maximum) for each of the `n` sequences it asks for (at most MAX_CHOICES).
-- gRPC calls are streams whose bodies are not read here: they reserve the model's
-- per-request maximum (prompt + new tokens). A client's own copy of the header is dropped.
-- Answers: usage.lua, which runs before this filter and marks the generation routes
-- (dynamic metadata `llm.usage.route`), reads the tokens an answer used into
-- `llm.usage.tokens`, which the quota settles to. An answer that reports no counts keeps
-- its reservation. Runs after auth.lua (which
-- sets x-llm-key-id) and the body size limit. DEFAULT_MAX_TOKENS, MAX_NEW_TOKENS and
-- MAX_PROMPT_TOKENS are generated from the model's config.pbtxt by render.py, MAX_CHOICES
-- from contracts/tensors.py.

local RESERVE_HEADER = "x-llm-token-reserve"

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
  if headers:get("x-llm-key-id") == nil then return end
  local usage = handle:streamInfo():dynamicMetadata():get("llm.usage")
  local route = usage ~= nil and usage.route or nil
  local reserve
  if route == "grpc" then
    reserve = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS
  elseif route == "json" then
    reserve = json_reservation(handle)
  else
    return
  end
  handle:headers():add(RESERVE_HEADER, tostring(reserve))  -- `headers` is stale after body()
  handle:streamInfo():dynamicMetadata():set("llm.usage", "reserved", tostring(reserve))
end
