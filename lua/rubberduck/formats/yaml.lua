-- rubberduck.formats.yaml — YAML through libyaml's emitter (core/results.c).
--
-- One document, no directive, block style; empty containers as [] and {}.
-- The text reads back as the same value under YAML 1.2's core schema and
-- under YAML 1.1 (PyYAML): a string is written plain only when it starts
-- with a letter or '_', holds only letters, digits, '_', '-', '.', '/' and
-- single inner spaces, and is none of y, n, yes, no, on, off, true, false,
-- null, nan, inf (any case); every other string is double-quoted with
-- escapes for what is not printable. Floats always carry a '.' ("1.0e+22").
-- Strings that are not valid UTF-8 are `!!binary` (base64).
local core = require "rubberduck.core"
local json = require "rubberduck.json"

local M = {}

function M.render(value, opts)
  if value == nil then value = json.null end
  return core.results.yaml(value)
end

return M
