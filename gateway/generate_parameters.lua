-- Carry the request id and caller identity into the generate extension's JSON body.
--
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
