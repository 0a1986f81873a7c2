"""The gateway's Python: the Envoy config renderer (render.py) and the API key store and tool
(keys.py). The rest of this folder is what Envoy runs: config templates, Lua filters, tiers
and the OpenAPI document."""
