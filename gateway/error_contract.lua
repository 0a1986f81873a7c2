-- The gateway's error contract (contracts/errors.py): request ids on the way in, one error
-- shape on the way out.
--
-- First filter of the chain, so it sees every request first and every answer last: Envoy's
-- own replies (already in the contract's shape, from the local-reply mappers), Triton's
-- errors and the model's. Only error answers are read (their bodies are small); successful
-- answers and token streams pass untouched.
--
-- Triton answers errors as {"error": "<message>"}: with HTTP 400 for every model error on
-- the generate routes, 500 for bodies its JSON reader rejects, and as a server-sent event on
-- generate_stream. The model starts its messages with the error type it means
-- (`overloaded: ...`, contracts/errors.py), which says the status. Such a body becomes
--   {"error": "<message> (request id <id>)", "code": <status>, "type": "<type>",
--    "request_id": "<id>"}
-- and a gRPC error keeps a proper status with `<message> (request id <id>)` as grpc-message.
--
-- STATUS (type -> HTTP status), TYPE_OF_STATUS (status -> type), GRPC_STATUS (type -> gRPC
-- code), OPENAI_PATH_PREFIXES and ERROR_TEXT (the `error` string's format) are defined above
-- this code by gateway/render.py from contracts/errors.py.

-- A client's request id is kept when it is short and plain; anything else is replaced.
local function ensure_request_id(headers)
  local id = headers:get("x-request-id")
  if id == nil or #id > 128 or not id:match("^[%w%-_.:]+$") then
    local parts = {}
    for i = 1, 4 do parts[i] = string.format("%08x", math.random(0, 0x7fffffff)) end
    id = table.concat(parts)
    headers:replace("x-request-id", id)
  end
  return id
end

math.randomseed(os.time() + math.floor(os.clock() * 1e6))

function envoy_on_request(handle)
  local headers = handle:headers()
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set("llm.gateway", "request_id", ensure_request_id(headers))
  -- The OpenAI-compatible routes answer in OpenAI's own error shape (openai_frontend/).
  local path = headers:get(":path") or ""
  local openai = false
  for _, prefix in ipairs(OPENAI_PATH_PREFIXES) do
    if path:sub(1, #prefix) == prefix then openai = true end
  end
  metadata:set("llm.gateway", "openai", openai)
end

-- Triton's own messages that name a condition other than their status says. Its JSON reader
-- files a body it cannot read under INTERNAL (500); a dead model process answers 400.
local TRITON_MESSAGES = {
  {"^failed to parse the request JSON buffer", "invalid_request"},
  {"^Unable to parse ", "invalid_request"},
  {"^attempt to ", "invalid_request"},
  {"^Expected JSON object for keyword", "invalid_request"},
  {"^failed to get request params", "invalid_request"},
  {"^parameter key .* was not found in the JSON", "invalid_request"},  -- a NUL in a name
  {"Stub process .* is not healthy", "unavailable"},  -- the runner restarts it in seconds
}

-- The contents of the JSON string that starts at `pos` (just after its opening quote), still
-- escaped, and the position after its closing quote.
local function json_string_at(text, pos)
  local start = pos
  while true do
    local at = text:find('["\\]', pos)
    if at == nil then return nil end
    if text:byte(at) == 92 then pos = at + 2 else return text:sub(start, at - 1), at + 1 end
  end
end

-- The message of a Triton error body, `{"error": "<message>"}` (also as one SSE event).
local function triton_message(text)
  local json = text:match("^%s*data:%s*(.-)%s*$") or text
  local open = json:match('^%s*{%s*"error"%s*:%s*"()')
  if open == nil then return nil end
  local message, after = json_string_at(json, open)
  if message == nil or not json:find("^%s*}%s*$", after) then return nil end
  return message
end

-- The type the model put before its message (contracts/errors.py), and the message without it.
local function model_type(message)
  local kind, rest = message:match("^([%l_]+): (.*)$")
  if kind ~= nil and STATUS[kind] ~= nil then return kind, rest end
  return nil, message
end

-- The error type and the message to show: the model's type when it named one, else the type
-- Triton's text or the status implies.
local function classify(message, status)
  local kind, rest = model_type(message)
  if kind ~= nil then return kind, rest end
  for _, rule in ipairs(TRITON_MESSAGES) do
    if message:find(rule[1]) then return rule[2], message end
  end
  return TYPE_OF_STATUS[status] or "internal", message
end

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(ch) return string.format("\\u%04x", ch:byte()) end))
end

local function request_metadata(handle, key)
  local meta = handle:streamInfo():dynamicMetadata():get("llm.gateway")
  return meta ~= nil and meta[key] or nil
end

local function request_id(handle)
  return request_metadata(handle, "request_id") or ""
end

-- 429 and 503 say when to come back: a rate limit when the key's bucket refills (at least
-- a second), anything else in a second.
local function add_retry_after(headers, status)
  if (status ~= 429 and status ~= 503) or headers:get("retry-after") ~= nil then return end
  local reset = status == 429 and tonumber(headers:get("x-ratelimit-reset") or "") or 0
  headers:add("retry-after", tostring(math.max(reset, 1)))
end

-- gRPC (status and message in headers or trailers): the status from the model's error type,
-- INVALID_ARGUMENT for a request Triton could not read, the request id in the message.
local function rewrite_grpc(handle, fields)
  local code = fields:get("grpc-status")
  if code == nil or code == "0" then return end
  local message = fields:get("grpc-message") or ""
  local kind, rest = model_type(message)
  if kind ~= nil then
    if GRPC_STATUS[kind] ~= nil then fields:replace("grpc-status", tostring(GRPC_STATUS[kind])) end
  elseif classify(message, 0) == "invalid_request" and code == "13" then
    fields:replace("grpc-status", "3")
  end
  fields:replace("grpc-message", string.format(ERROR_TEXT, rest, request_id(handle)))
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = tonumber(headers:get(":status") or "") or 0
  if (headers:get("content-type") or ""):find("^application/grpc") then
    if headers:get("grpc-status") ~= nil then  -- trailers-only: an error before any message
      rewrite_grpc(handle, headers)
    end
    return
  end
  if status < 400 then return end
  if request_metadata(handle, "openai") then  -- already in OpenAI's shape
    add_retry_after(headers, status)
    return
  end
  local body = handle:body()  -- waits for the (small) error body; `headers` is stale after
  if body == nil then return end  -- no body to rewrite (Triton's readiness answers)
  local text = body:length() > 0 and body:getBytes(0, body:length()) or ""
  headers = handle:headers()
  if text:find('^{"code":%d+,"error":') then  -- Envoy's own reply: already in the contract
    add_retry_after(headers, status)
    return
  end
  local message = triton_message(text)
  if message == nil then
    message = text ~= "" and json_escape(text:sub(1, 500))
        or string.format("the model server answered %d without details", status)
  end
  local kind, rest = classify(message, status)
  status = STATUS[kind]
  local id = json_escape(request_id(handle))
  local answer = string.format('{"code":%d,"error":"%s","request_id":"%s","type":"%s"}',
                               status, string.format(ERROR_TEXT, rest, id), id, kind)
  body:setBytes(answer)
  headers:replace(":status", tostring(status))
  headers:replace("content-type", "application/json")
  headers:remove("transfer-encoding")
  headers:replace("content-length", tostring(#answer))
  add_retry_after(headers, status)
end
