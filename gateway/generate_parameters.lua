-- Between API clients and Triton's HTTP frontend: bodies checked and ids added on the way
-- in (answers are put in the error contract's shape by error_contract.lua).
--
-- Requests: refuse JSON nested deeper than MAX_JSON_DEPTH (Triton's JSON reader recurses
-- once per level: a 400 KB body of 200,000 `[` overflowed its stack and killed the server)
-- and infer tensors whose `shape` claims more elements than the body has bytes (Triton
-- allocates what the shape claims before reading `data`: a 150-byte body claiming [1, 2^40]
-- INT32 elements threw std::bad_alloc and aborted the server), then carry the request id and
-- caller identity (and the client's adapter header) into the generate extension's JSON body.
-- Why: Triton forwards chosen headers to the model as request parameters on `infer`, but not
-- on `generate` / `generate_stream`; there only a top-level "parameters" object in the body
-- reaches the model. The model's per-request log line needs the request id and key id to
-- join the access log. Runs after auth.lua, which set the x-llm-* headers.

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(ch) return string.format("\\u%04x", ch:byte()) end))
end

-- Put the request id and identity into the generate body's `parameters`.
local function add_generate_parameters(handle, request_id, key_id, tier, adapter, models)
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  local rest = text:match("^%s*{(.*)$")
  if rest == nil then return end  -- not a JSON object: Triton answers 400 itself
  if text:find('[{,]%s*"parameters"%s*:') then
    handle:respond({[":status"] = "400", ["content-type"] = "text/plain"},
      "the `parameters` field is reserved on this route; send sampling settings as top-level fields")
    return
  end
  local params = string.format('"parameters":{"x-request-id":"%s","x-llm-key-id":"%s","x-llm-tier":"%s","x-llm-adapter":"%s","x-llm-models":"%s"}',
    json_escape(request_id), json_escape(key_id), json_escape(tier), json_escape(adapter),
    json_escape(models or ""))
  local separator = rest:match("^%s*}") and "" or ","
  local new_body = "{" .. params .. separator .. rest
  body:setBytes(new_body)
  handle:headers():replace("content-length", tostring(#new_body))
end

-- Deeper than any request of this API needs (an infer body is about 5 levels deep).
local MAX_JSON_DEPTH = 64

-- Whether the JSON text's arrays and objects nest deeper than `limit` (strings skipped; a
-- malformed text is left for Triton to refuse).
local function nests_deeper_than(text, limit)
  local depth, pos = 0, 1
  while true do
    local at, _, ch = text:find('([%[%]{}"])', pos)
    if at == nil then return false end
    pos = at + 1
    if ch == '"' then
      while true do  -- to the closing quote, stepping over escapes
        local quote = text:find('["\\]', pos)
        if quote == nil then return false end
        if text:byte(quote) == 92 then pos = quote + 2 else pos = quote + 1; break end
      end
    elseif ch == "[" or ch == "{" then
      depth = depth + 1
      if depth > limit then return true end
    else
      depth = depth - 1
    end
  end
end

-- Whether any `"shape": [...]` in the JSON text multiplies out to more than `limit`
-- elements (shapes Triton cannot read, negative or not numbers, are left for it to refuse).
local function claims_more_elements_than(text, limit)
  for dims in text:gmatch('"shape"%s*:%s*%[([^%]]*)%]') do
    local count = 1
    for dim in dims:gmatch("[^,%s]+") do
      local value = tonumber(dim)
      if value == nil or value < 0 then count = 0; break end
      count = count * value
    end
    if count > limit then return true end
  end
  return false
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local key_id = headers:get("x-llm-key-id")
  local path = (headers:get(":path") or ""):gsub("%?.*$", "")
  local generate = path:match("/generate[_%w]*$") ~= nil
  if key_id == nil or headers:get(":method") ~= "POST" or not (generate or path:match("/infer$")) then
    return
  end
  local request_id, tier = headers:get("x-request-id") or "", headers:get("x-llm-tier") or ""
  -- (read before the body: header objects are stale after the wait for it)
  local adapter = headers:get("x-llm-adapter") or ""
  local models = headers:get("x-llm-models")  -- nil: the key may use every model
  -- With the binary tensor extension only the first bytes of the body are JSON.
  local json_length = tonumber(headers:get("inference-header-content-length") or "")
  local body = handle:body()  -- the whole body (at most the gateway's 1 MiB limit)
  if body == nil then return end
  local length = body:length()
  if json_length ~= nil and json_length >= 0 and json_length < length then length = json_length end
  local text = length > 0 and body:getBytes(0, length) or ""
  if nests_deeper_than(text, MAX_JSON_DEPTH) then
    handle:respond({[":status"] = "400", ["content-type"] = "text/plain"},
      string.format("the JSON body nests arrays and objects deeper than %d levels", MAX_JSON_DEPTH))
    return
  end
  -- Every element takes at least one byte of the body, as JSON or as binary data.
  if not generate and claims_more_elements_than(text, body:length()) then
    handle:respond({[":status"] = "400", ["content-type"] = "text/plain"},
      "a tensor's `shape` claims more elements than the request body carries")
    return
  end
  if generate then add_generate_parameters(handle, request_id, key_id, tier, adapter, models) end
end
