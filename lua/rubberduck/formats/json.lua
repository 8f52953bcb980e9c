-- rubberduck.formats.json — JSON (RFC 8259) through the engine's codec.
--
-- Default: two-space indentation, keys sorted (readable, stable). With
-- opts.canonical: the canonical form (core/json.h: keys sorted in UTF-8
-- byte order, no insignificant whitespace) — the bytes the output digest
-- is taken over. Strings that are not valid UTF-8 are written as the
-- base64 of their bytes (the envelope lists their pointers in
-- metadata.binary_paths).
local json = require "rubberduck.json"

local M = {}

function M.render(value, opts)
  if value == nil then value = json.null end
  if opts.canonical then return json.encode(value, { canonical = true, binary = true }) end
  return json.encode(value, { pretty = true, sort_keys = true, binary = true })
end

return M
