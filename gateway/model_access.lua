-- Keys limited to some models (`make key MODELS=demo_model,support-v2`): refuse, before any
-- work, a request naming a model or adapter outside the key's list, on what the gateway can
-- read, and tell the model the list for the rest.
--
-- auth.lua set MODELS_HEADER to the key's list (a comma-separated string) for such keys only;
-- other keys pass untouched. Read here: the `x-llm-adapter` header on every route, the
-- `model` field of the OpenAI routes' JSON bodies (/v1/..., /tokenize, /detokenize), and the
-- generate routes' `adapter` field (absent: the base model). KServe infer bodies (binary
-- tensors) and gRPC messages are not read: the list goes on to Triton, rewritten with
-- BASE_MODEL_TOKEN for the base model, and the model refuses an adapter outside it (403).
--
-- BASE_MODEL (the served model's id), MODELS_HEADER, ADAPTER_HEADER and BASE_MODEL_TOKEN are
-- defined above this code by gateway/render.py (contracts/headers.py).

local function json_fields(text, name)
  local found = {}
  for value in text:gmatch('"' .. name .. '"%s*:%s*"([^"\\]*)"') do found[#found + 1] = value end
  return found
end

local function refuse(handle, model, allowed)
  handle:respond({[":status"] = "403", ["content-type"] = "text/plain"},
    string.format("this API key may not use the model `%s`; it may use: %s",
                  model:sub(1, 80), allowed))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local listed = headers:get(MODELS_HEADER)
  if listed == nil then return end
  local allowed = {}
  for model in listed:gmatch("[^,]+") do allowed[model] = true end
  local adapter = headers:get(ADAPTER_HEADER)
  local path = (headers:get(":path") or ""):gsub("%?.*$", "")
  local method = headers:get(":method")
  local forwarded = {}
  for model in listed:gmatch("[^,]+") do
    forwarded[#forwarded + 1] = model == BASE_MODEL and BASE_MODEL_TOKEN or model
  end
  headers:replace(MODELS_HEADER, table.concat(forwarded, ","))
  if adapter ~= nil and adapter ~= "" and not allowed[adapter] then
    return refuse(handle, adapter, listed)
  end
  if method ~= "POST" then return end
  local openai = path:find("^/v1/") or path:find("^/tokenize$") or path:find("^/detokenize$")
  local generate = path:find("/generate[_%w]*$") ~= nil
  if not openai and not generate then return end
  local body = handle:body()  -- bounded by the gateway's body limit (filter 4)
  local text = body ~= nil and body:length() > 0 and body:getBytes(0, body:length()) or ""
  local named = json_fields(text, openai and "model" or "adapter")
  if generate and #named == 0 and (adapter == nil or adapter == "") then
    named = {BASE_MODEL}  -- no adapter: the base model
  end
  for _, model in ipairs(named) do
    local id = (generate and model == "") and BASE_MODEL or model
    if not allowed[id] then return refuse(handle, id, listed) end
  end
end
