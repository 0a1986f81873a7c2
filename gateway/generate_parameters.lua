-- Between API clients and Triton's HTTP frontend: ids into generate bodies on the way in,
-- client mistakes reported as client mistakes on the way out.
--
-- Requests: carry the request id and caller identity into the generate extension's JSON body.
-- Why: Triton forwards chosen headers to the model as request parameters on `infer`, but not
-- on `generate` / `generate_stream`; there only a top-level "parameters" object in the body
-- reaches the model. The model's per-request log line needs the request id and key id to
-- join the access log. Runs after auth.lua, which set the x-llm-* headers.

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(ch) return string.format("\\u%04x", ch:byte()) end))
end

-- Put the request id and identity into the generate body's `parameters`.
local function add_generate_parameters(handle, request_id, key_id, tier)
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
  local params = string.format('"parameters":{"x-request-id":"%s","x-llm-key-id":"%s","x-llm-tier":"%s"}',
    json_escape(request_id), json_escape(key_id), json_escape(tier))
  local separator = rest:match("^%s*}") and "" or ","
  local new_body = "{" .. params .. separator .. rest
  body:setBytes(new_body)
  handle:headers():replace("content-length", tostring(#new_body))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local key_id = headers:get("x-llm-key-id")
  local path = headers:get(":path") or ""
  if key_id ~= nil and headers:get(":method") == "POST" and path:match("/generate[_%w]*$") then
    add_generate_parameters(handle, headers:get("x-request-id") or "", key_id,
                            headers:get("x-llm-tier") or "")
  end
end

-- Answers: Triton reports some client mistakes in a shape API clients cannot use.
--  * A body its JSON reader rejects (not JSON, not an object, a string where a number
--    belongs, a negative seed, ...) comes back as 500 on `generate`, `generate_stream` and
--    `infer`: Triton files those reader errors under INTERNAL. They become 400.
--  * A `generate_stream` request refused before its first event is a 400 or 503 whose body
--    is a server-sent event (`data: {"error": ...}`). It becomes a plain JSON body.
--  * A gRPC message that is not a protobuf at all is INTERNAL ("Unable to parse request");
--    it becomes INVALID_ARGUMENT.
-- Error bodies are small, so buffering them costs nothing; successful answers and token
-- streams are never buffered.
local JSON_READER_ERRORS = {
  "^failed to parse the request JSON buffer", "^Unable to parse ", "^attempt to ",
  "^Expected JSON object for keyword", "^failed to get request params",
}

local function triton_error_message(text)
  return text:match('^%s*{%s*"error"%s*:%s*"(.*)"%s*}%s*$')
end

local function is_json_reader_error(text)
  local message = triton_error_message(text)
  if message == nil then return false end
  for _, pattern in ipairs(JSON_READER_ERRORS) do
    if message:find(pattern) then return true end
  end
  return false
end

local function replace_body(handle, text)
  handle:body():setBytes(text)
  local headers = handle:headers()
  headers:remove("transfer-encoding")
  headers:replace("content-length", tostring(#text))
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = headers:get(":status") or ""
  local content_type = headers:get("content-type") or ""
  if content_type:find("^application/grpc") then
    if headers:get("grpc-status") == "13" and headers:get("grpc-message") == "Unable to parse request" then
      headers:replace("grpc-status", "3")
    end
    return
  end
  local event_stream_error = status:match("^[45]%d%d$") and content_type:find("^text/event%-stream")
  if status ~= "500" and not event_stream_error then return end
  local body = handle:body()  -- waits for the whole body; `headers` is stale after this
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  if event_stream_error then
    local event = text:match("^%s*data:%s*(.-)%s*$")
    if event ~= nil and triton_error_message(event) ~= nil then
      handle:headers():replace("content-type", "application/json")
      replace_body(handle, event)
      text = event
    end
  end
  if status == "500" and is_json_reader_error(text) then
    handle:headers():replace(":status", "400")
  end
end
