-- API-key authentication and caller identity for the LLM gateway.
--
-- Why Lua: Envoy's api_key_auth filter compares plaintext keys, and no plaintext key may be
-- stored at rest. This filter hashes the presented key (SHA-256) and looks the digest up in
-- KEYS, a table of digests -> identity that `gateway/keys.py` generates and Envoy reloads
-- through ECDS whenever the key store changes (no restart, in-flight requests unaffected).
--
-- On success the key headers are removed and the caller's identity is set: its key id and
-- tier as headers for the services behind (any client copy of IDENTITY_HEADERS is dropped
-- first), its name as dynamic metadata for the access log only.
--
-- KEYS, IDENTITY_HEADERS, KEY_ID_HEADER, TIER_HEADER, MODELS_HEADER and KEY_NAME_METADATA are
-- defined above this code by
-- gateway/render.py (the headers from contracts/headers.py).

local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

-- SHA-256 of a string, as 64 lowercase hex digits (FIPS 180-4, on LuaJIT's 32-bit bit ops).
local function sha256(message)
  local h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}
  local bits = #message * 8
  message = message .. "\128" .. string.rep("\0", (55 - #message) % 64)
      .. string.char(0, 0, 0, 0, band(rshift(bits, 24), 255), band(rshift(bits, 16), 255),
                     band(rshift(bits, 8), 255), band(bits, 255))
  local w = {}
  for chunk = 1, #message, 64 do
    for i = 0, 15 do
      local b1, b2, b3, b4 = message:byte(chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
    end
    for i = 16, 63 do
      local s0 = bxor(ror(w[i - 15], 7), ror(w[i - 15], 18), rshift(w[i - 15], 3))
      local s1 = bxor(ror(w[i - 2], 17), ror(w[i - 2], 19), rshift(w[i - 2], 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
    for i = 0, 63 do
      local t1 = tobit(hh + bxor(ror(e, 6), ror(e, 11), ror(e, 25))
                       + bxor(band(e, f), band(bnot(e), g)) + K[i + 1] + w[i])
      local t2 = tobit(bxor(ror(a, 2), ror(a, 13), ror(a, 22))
                       + bxor(band(a, b), band(a, c), band(b, c)))
      hh, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    local v = {a, b, c, d, e, f, g, hh}
    for i = 1, 8 do h[i] = tobit(h[i] + v[i]) end
  end
  local out = {}
  for i = 1, 8 do out[i] = tohex(h[i], 8) end
  return table.concat(out)
end

local function presented_key(headers)
  local key = headers:get("x-api-key")
  if key ~= nil then
    key = key:match("^%s*(%S+)%s*$")  -- some clients keep the space after the colon
  else
    local authorization = headers:get("authorization")
    if authorization ~= nil then
      key = authorization:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
    end
  end
  return key
end

function envoy_on_request(handle)
  local headers = handle:headers()
  for _, name in ipairs(IDENTITY_HEADERS) do headers:remove(name) end
  local key = presented_key(headers)
  headers:remove("x-api-key")
  headers:remove("authorization")
  if key == nil then
    handle:respond({[":status"] = "401", ["www-authenticate"] = 'Bearer realm="llm"',
                    ["content-type"] = "text/plain"},
      "an API key is required: send it as `X-API-Key: <key>` or `Authorization: Bearer <key>`")
    return
  end
  local entry = KEYS[sha256(key)]
  if entry == nil then
    handle:respond({[":status"] = "403", ["content-type"] = "text/plain"},
      "the API key is not valid")
    return
  end
  headers:add(KEY_ID_HEADER, entry.id)
  headers:add(TIER_HEADER, entry.tier)
  -- A key limited to some models (`make key MODELS=a,b`): model_access.lua checks it.
  if entry.models ~= nil then headers:add(MODELS_HEADER, entry.models) end
  handle:streamInfo():dynamicMetadata():set(KEY_NAME_METADATA[1], KEY_NAME_METADATA[2],
                                            entry.name)
end
