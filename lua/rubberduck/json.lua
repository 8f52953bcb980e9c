-- rubberduck.json — the JSON codec every boundary of the engine uses.
--
-- A thin facade over the C codec (core/json.c): arrays and objects stay
-- apart ([] decodes to a table with json.array_mt, and encodes back as []),
-- integers up to 2^53 are exact, invalid UTF-8 and nesting deeper than
-- json.max_depth are refused with an error that says where.
--
--   json.decode(text [, opts]) -> value | nil, message
--   json.encode(value [, opts]) -> text | nil, message
--       opts = { sort_keys = bool, pretty = bool, max_depth = n,
--                canonical = bool, binary = bool }
--   json.null                  the null sentinel (a light userdata)
--   json.array([t]), json.object([t])   mark a table's JSON type
--   json.is_array(v)           the encoder's rule for tables
local core = require "rubberduck.core"

local J = core.json
local M = {}

M.decode = J.decode
M.encode = J.encode
M.null = J.null
M.array = J.array
M.object = J.object
M.is_array = J.is_array
M.array_mt = J.array_mt
M.object_mt = J.object_mt
M.utf8_valid = J.utf8_valid
M.max_depth = 128

-- Canonical form: sorted keys, no insignificant whitespace.
M.canonical = J.encode_canonical

function M.pretty(v)
  return J.encode(v, { pretty = true, sort_keys = false })
end

return M
