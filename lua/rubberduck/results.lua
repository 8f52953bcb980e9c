-- rubberduck.results — stage 4 of the pipeline: the result processor.
--
-- Whatever a handler returns becomes a well-formed, typed, described result
-- in the format asked for, or an invalid_output error that names the
-- offending value. One pass, the same at every security level:
--
--   1 normalize   core.results.normalize (core/results.c): the JSON rules
--                 (no functions, userdata, cycles, NaN/inf, sparse or mixed
--                 tables, nesting past 128), arrays marked, number keys of
--                 object-marked tables as text; strings that are not valid
--                 UTF-8 kept as bytes and listed as binary
--   2 schema      output.schema, with the project's validator, on the JSON
--                 view (binary strings as base64 text)
--   3 transform   redact (keys, patterns), then truncate (long strings),
--                 from the tool's output block and the caller's options
--   4 format      the format must be able to show the value (binary needs
--                 a string); rendering itself is lazy (M.render)
--   5 enrich      metadata: format, tool_version, principal, output_bytes,
--                 output_digest, binary_paths, encoding, redacted, truncated
--   6 persist     PERSISTENCE STEP: when the engine has a persist function
--                 (engine.persist(execution_id, bytes, meta)) and the
--                 output is larger than M.PERSIST_THRESHOLD, the canonical
--                 JSON, zstd-compressed, is handed to it
--   7 event       "tool.result.processed" (M.emit, called by the pipeline
--                 once the envelope is whole)
--
-- The envelope's output is the JSON view: the normalized value with every
-- binary string replaced by the base64 of its bytes (standard alphabet,
-- padded), their JSON pointers in metadata.binary_paths. With format
-- binary the whole output is the base64 of its bytes (metadata.encoding =
-- "base64", binary_paths = [""]). M.raw(env) gives back the bytes;
-- M.render(env [, opts]) the text in the envelope's format.
--
-- output_digest: BLAKE2b-256 (libsodium crypto_generichash, 32 bytes, no
-- key), lowercase hex, of the canonical JSON (json.encode(output,
-- { canonical = true })) of the envelope's output — the exact bytes that
-- output_bytes counts. Check: b2sum -l 256 over those bytes.
local core = require "rubberduck.core"
local json = require "rubberduck.json"
local errors = require "rubberduck.errors"
local formats = require "rubberduck.formats"
local dsl = require "rubberduck.dsl"

local R = core.results
local M = {}

M.FORMATS = formats.list
-- Outputs whose canonical JSON is larger than this go to engine.persist.
M.PERSIST_THRESHOLD = 1048576
-- zstd level for persisted outputs.
M.COMPRESS_LEVEL = 3
-- How many truncated strings metadata.truncated lists.
M.MAX_TRUNCATED_LIST = 100

local type, pairs, ipairs, next, tostring = type, pairs, ipairs, next, tostring
local getmetatable, setmetatable = getmetatable, setmetatable
local format, sub, find, gsub, lower, byte = string.format, string.sub, string.find,
  string.gsub, string.lower, string.byte
local concat = table.concat
local array_mt, null = json.array_mt, json.null

-- ---- JSON pointers ------------------------------------------------------------

local function tokens(ptr)
  local out = {}
  if ptr == "" then return out end
  for tok in (sub(ptr, 2) .. "/"):gmatch("([^/]*)/") do
    out[#out + 1] = (gsub(gsub(tok, "~1", "/"), "~0", "~"))
  end
  return out
end
M.pointer_tokens = tokens

local function escape_token(k)
  return (gsub(gsub(k, "~", "~0"), "/", "~1"))
end

local function shallow(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return setmetatable(c, getmetatable(t))
end

-- A copy of `root` (sharing what is not on the path) whose value at `ptr`
-- is fn(old). Array tokens are 0-based.
local function update(root, ptr, fn)
  local toks = tokens(ptr)
  if #toks == 0 then return fn(root) end
  local top = shallow(root)
  local cur = top
  for i, tok in ipairs(toks) do
    local key = tok
    if getmetatable(cur) == array_mt then key = tonumber(tok) + 1 end
    if i == #toks then
      cur[key] = fn(cur[key])
    else
      local nxt = shallow(cur[key])
      cur[key] = nxt
      cur = nxt
    end
  end
  return top
end
M.update = update

-- The JSON view of a normalized value: binary strings as base64.
function M.view(raw, binary_paths)
  for _, p in ipairs(binary_paths or {}) do raw = update(raw, p, R.base64) end
  return raw
end

-- The bytes back from a view: base64 at each pointer decoded. Used for
-- the worker's answer (JSON cannot carry bytes) and by M.raw.
function M.unview(v, binary_paths)
  if type(binary_paths) ~= "table" then return v end
  for _, p in ipairs(binary_paths) do
    v = update(v, p, function(s)
      local b = type(s) == "string" and R.unbase64(s)
      if not b then error("binary_paths: no base64 string at " .. p, 0) end
      return b
    end)
  end
  return v
end

-- ---- errors --------------------------------------------------------------------

local REASONS = R.reasons

-- Split "POINTER: REASON" (xcopy or normalize) at the known reason.
function M.split_message(msg)
  for _, r in ipairs(REASONS) do
    if #msg >= #r + 2 and sub(msg, -#r - 2) == ": " .. r then
      return sub(msg, 1, -#r - 3), r
    end
  end
  return nil
end

-- An invalid_output error with the pointer in details.errors.
function M.encode_error(msg)
  local ptr, reason = M.split_message(msg)
  if not ptr then
    return errors.new("invalid_output", "output cannot be encoded: " .. msg)
  end
  local where = ptr == "" and "the root" or ptr
  return errors.new("invalid_output", format("output cannot be encoded: %s at %s", reason, where),
    { errors = json.array({ { pointer = ptr, keyword = "encodable", schema_path = "",
      message = format("%s: %s", where, reason) } }) })
end

-- ---- options ------------------------------------------------------------------------

local regex_flags
local function compile_patterns(list)
  local ok, rex = pcall(require, "rex_pcre2")
  if not ok then return nil, "redact.patterns: PCRE2 (lua-rex-pcre2) is not available" end
  regex_flags = regex_flags or rex.flags().UTF
  local out = {}
  for i, p in ipairs(list) do
    local okc, re = pcall(rex.new, p, regex_flags)
    if not okc then return nil, format("redact.patterns[%d]: %s", i, tostring(re)) end
    out[#out + 1] = { re = re, gsub = rex.gsub }
  end
  return out
end

local function glob(p)
  local lp = gsub(lower(p), "[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0")
  return "^" .. gsub(lp, "%*", ".*") .. "$"
end

-- Compile a normalized redact spec: { keys = {lua patterns}, patterns = {regex}, replacement }.
function M.compile_redact(spec)
  if spec == nil then return nil end
  local keys = {}
  for _, k in ipairs(spec.keys or {}) do keys[#keys + 1] = glob(k) end
  local pats, err = compile_patterns(spec.patterns or {})
  if not pats then return nil, err end
  return { keys = keys, patterns = pats, replacement = spec.replacement or "[REDACTED]" }
end

-- The tool's output options, compiled once at load (init.lua).
function M.compile_tool(def_output)
  local red, err = M.compile_redact(def_output.redact)
  if err then return nil, "output." .. err end
  return { redact = red, truncate = def_output.truncate }
end

local function merge_redact(a, b)
  if not a then return b end
  if not b then return a end
  local m = { keys = {}, patterns = {}, replacement = a.replacement }
  for _, r in ipairs({ a, b }) do
    for _, k in ipairs(r.keys) do m.keys[#m.keys + 1] = k end
    for _, p in ipairs(r.patterns) do m.patterns[#m.patterns + 1] = p end
  end
  return m
end

-- The caller's options (submit/execute opts): format, redact, truncate.
-- Caller redaction adds to the tool's; the smaller truncate wins.
-- Returns { format, redact, truncate } | nil, message.
local plain_options = setmetatable({}, { __mode = "k" }) -- def_output -> options

function M.options(tool_opts, def_output, opts)
  if opts.format == nil and opts.redact == nil and opts.truncate == nil then
    -- the caller asked for nothing: the tool's own options, made once
    local o = plain_options[def_output]
    if o and o.of == tool_opts then return o end
  end
  local fmt = opts.format or def_output.format or "json"
  if not formats.known[fmt] then
    return nil, "format: expected one of " .. concat(formats.list, ", ") .. ", got " .. tostring(fmt)
  end
  local red = tool_opts and tool_opts.redact
  if opts.redact ~= nil then
    local c = dsl.checker("options")
    local spec = dsl.redact_spec(c, "redact", opts.redact, json)
    if #c.problems > 0 then return nil, (gsub(c.problems[1], "^options: ", "")) end
    local compiled, err = M.compile_redact(spec)
    if not compiled then return nil, err end
    red = merge_redact(red, compiled)
  end
  local trunc = tool_opts and tool_opts.truncate
  if opts.truncate ~= nil then
    local n = opts.truncate
    if type(n) ~= "number" or n < 1 or n % 1 ~= 0 then
      return nil, "truncate: expected a whole number of bytes > 0, got " .. tostring(n)
    end
    if not trunc or n < trunc then trunc = n end
  end
  local o = { format = fmt, redact = red, truncate = trunc, of = tool_opts }
  if opts.format == nil and opts.redact == nil and opts.truncate == nil then
    plain_options[def_output] = o
  end
  return o
end

-- The caller's options checked before the tool runs (a call that could
-- not be shown as asked does not run). Returns nil | message.
function M.check_options(t, opts)
  local _, err = M.options(t.output_opts, t.def.output, opts or {})
  return err and ("options: " .. err) or nil
end

-- ---- transformations ------------------------------------------------------------------

local function key_matches(red, k)
  if type(k) ~= "string" then return false end
  local lk = lower(k)
  for _, p in ipairs(red.keys) do
    if find(lk, p) then return true end
  end
  return false
end

-- Redact in place (the value is the processor's own copy). Returns the
-- value and the number of replacements.
local function redact(v, red, count)
  if type(v) == "string" then
    if #red.patterns > 0 and json.utf8_valid(v) then
      for _, p in ipairs(red.patterns) do
        local s, n = p.gsub(v, p.re, function() return red.replacement end)
        if n > 0 then v, count = s, count + n end
      end
    end
    return v, count
  end
  if type(v) ~= "table" then return v, count end
  local isarr = getmetatable(v) == array_mt
  for k, x in pairs(v) do
    if not isarr and key_matches(red, k) then
      v[k] = red.replacement
      count = count + 1
    else
      v[k], count = redact(x, red, count)
    end
  end
  return v, count
end
M.redact = function(v, red) return redact(v, red, 0) end

-- Cut a valid UTF-8 string to at most n bytes at a character boundary.
local function utf8_cut(s, n)
  if n >= #s then return s end
  local i = n
  -- step back over continuation bytes so the cut starts a character
  while i > 0 do
    local b = byte(s, i + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end
    i = i - 1
  end
  return sub(s, 1, i)
end

function M.marker(original)
  return format(" [truncated: %d bytes in all]", original)
end

-- Truncate strings longer than n bytes, in place. Returns value, list.
local function truncate(v, n, ptr, list, keep)
  if type(v) == "string" then
    if #v <= n or v == keep then return v end
    local entry = { pointer = ptr, original_bytes = #v }
    if #list < M.MAX_TRUNCATED_LIST then list[#list + 1] = entry end
    list.count = (list.count or 0) + 1
    if json.utf8_valid(v) then return utf8_cut(v, n) .. M.marker(#v) end
    return sub(v, 1, n)   -- bytes: cut, the marker is in metadata
  end
  if type(v) ~= "table" then return v end
  local isarr = getmetatable(v) == array_mt
  for k, x in pairs(v) do
    local p = ptr .. "/" .. (isarr and tostring(k - 1) or escape_token(k))
    v[k] = truncate(x, n, p, list, keep)
  end
  return v
end
-- keep: a string left whole (the redaction's replacement).
M.truncate = function(v, n, keep)
  local list = json.array({})
  local out = truncate(v, n, "", list, keep)
  local count = list.count or 0
  list.count = nil
  return out, list, count
end

-- ---- the processor ------------------------------------------------------------------------

local function validate(t, view)
  if not (t and t.output_validator) then return true end
  local ok, errs = t.output_validator(view == nil and null or view)
  if ok then return true end
  local msgs = {}
  for i, e in ipairs(errs) do if i <= 5 then msgs[#msgs + 1] = e.message end end
  if #errs > 5 then msgs[#msgs + 1] = format("and %d more", #errs - 5) end
  return nil, errors.new("invalid_output", "output fails output.schema: " .. concat(msgs, "; "),
    { errors = json.array(errs) })
end

-- Stage 4. `output`, `err`: what stage 3 ended with. Fills meta; returns
-- the envelope's output (the JSON view) and an error or nil.
function M.process(engine, h, output, err, meta)
  meta.principal = h.caller and h.caller.principal or nil
  local t = engine.registry:get(h.name)
  if err then
    if err.kind == "invalid_output" and err.details == nil then
      local e = M.encode_error(err.message)
      err.message, err.details = e.message, e.details
    end
    return nil, err
  end
  local def_output = t and t.def.output or {}
  local o, oerr = M.options(t and t.output_opts, def_output, h.opts or {})
  if not o then
    meta.format = def_output.format or "json"   -- the envelope names a real format
    return nil, errors.new("invalid_params", "options: " .. oerr)
  end
  meta.format = o.format

  -- The common case: nothing to redact, truncate or encode as binary, and
  -- an output that is already plain data: normalized in place (the
  -- pipeline owns it: a copy out of the tool state, or decoded), its
  -- canonical JSON measured and digested in one C call.
  if not o.redact and not o.truncate and o.format ~= "binary" and output ~= nil then
    local persist = engine.persist
    local fast, nbytes, digest, canonical = R.finish(output, persist ~= nil)
    if fast then
      local ok, serr = validate(t, output)
      if not ok then return nil, serr end
      local fok, ferr = formats.check(output, o.format)
      if not fok then return nil, errors.new("invalid_output", ferr) end
      meta.output_bytes, meta.output_digest = nbytes, digest
      if persist and nbytes > (engine.persist_threshold or M.PERSIST_THRESHOLD) then
        M.persist(engine, h, canonical, meta)
      end
      return output, nil
    end
  end

  -- 1 normalize
  local raw, bins = R.normalize(output)
  if type(bins) == "string" then return nil, M.encode_error(bins) end
  table.sort(bins)   -- the order of a table walk is not the same everywhere
  -- 2 output schema, on what consumers see
  local ok, serr = validate(t, #bins > 0 and M.view(raw, bins) or raw)
  if not ok then return nil, serr end
  -- 3 transformations: redact, then truncate
  local changed = false
  if o.redact then
    local n
    raw, n = M.redact(raw, o.redact)
    if n > 0 then meta.redacted = n; changed = true end
  end
  if o.truncate then
    local list, n
    raw, list, n = M.truncate(raw, o.truncate, o.redact and o.redact.replacement)
    if n > 0 then meta.truncated = list; changed = true end
  end
  if changed then
    raw, bins = R.normalize(raw)
    table.sort(bins)
  end
  -- 4 format
  local fok, ferr = formats.check(raw, o.format)
  if not fok then return nil, errors.new("invalid_output", ferr) end
  local view
  if o.format == "binary" then
    view = R.base64(raw)
    meta.encoding = "base64"
    meta.binary_paths = json.array({ "" })
  else
    view = #bins > 0 and M.view(raw, bins) or raw
    if #bins > 0 then
      meta.encoding = "base64"
      meta.binary_paths = bins
    end
  end
  -- 5 enrich
  local canonical = assert(json.canonical(view == nil and null or view))
  meta.output_bytes = #canonical
  meta.output_digest = R.digest(canonical)
  -- 6 persist (item 6 of issue 8: the store provides engine.persist)
  if engine.persist and #canonical > (engine.persist_threshold or M.PERSIST_THRESHOLD) then
    M.persist(engine, h, canonical, meta)
  end
  return view, nil
end

-- PERSISTENCE STEP. Hands the canonical JSON of the output, compressed
-- with zstd, to engine.persist(execution_id, bytes, meta); meta = {
-- encoding = "zstd", output_bytes, output_digest, format, binary_paths }.
-- persist returns true (or a reference string) | nil, message. A failure
-- is reported on the envelope (metadata.persisted.error), never fatal.
function M.persist(engine, h, canonical, meta)
  local frame = R.compress(canonical, M.COMPRESS_LEVEL)
  local pmeta = { encoding = "zstd", output_bytes = meta.output_bytes,
    output_digest = meta.output_digest, format = meta.format,
    binary_paths = meta.binary_paths or json.array({}) }
  local ok, res, msg = pcall(engine.persist, h.id, frame, pmeta)
  if ok and res then
    meta.persisted = { ref = type(res) == "string" and res or h.id, stored_bytes = #frame,
      encoding = "zstd", encrypted = engine.persist_key ~= nil }
  else
    meta.persisted = { error = tostring(ok and msg or res) }
  end
end

-- Bytes persisted by M.persist back to the canonical JSON text.
function M.unpack_persisted(frame, max_bytes)
  return R.decompress(frame, max_bytes)
end

-- "tool.result.processed": the envelope's metadata to telemetry and every
-- subscriber (a subscriber that raises is reported by the bus and counted
-- in engine.bus:errors(); the pipeline goes on). The result cache, when it
-- answers a call, emits the same with name "tool.result.cached".
function M.emit(engine, env, name)
  name = name or "tool.result.processed"
  if not engine:wants(name) then return 0 end
  local m = env.metadata
  local md = { execution_id = env.execution_id, tool = env.tool, status = env.status,
    format = m.format, principal = m.principal, tool_version = m.tool_version,
    security_level = m.security_level ~= null and m.security_level or nil,
    output_digest = m.output_digest, encoding = m.encoding, cached = m.cached,
    kind = env.error ~= null and env.error.kind or nil,
    persisted = m.persisted and (m.persisted.ref or "error") or nil }
  local ms = { output_bytes = m.output_bytes or 0, duration_ms = m.duration_ms,
    attempts = m.attempts, redacted = m.redacted or 0,
    truncated = m.truncated and #m.truncated or 0,
    binary_values = m.binary_paths and #m.binary_paths or 0 }
  return engine:emit(name, ms, md)
end

-- ---- reading an envelope back ------------------------------------------------------------------

-- The output with its bytes: binary strings decoded from the view.
function M.raw(env)
  if env.status ~= "ok" then return nil end
  local out = env.output
  if out == null then return nil end
  local paths = env.metadata and env.metadata.binary_paths
  if paths and #paths > 0 then return M.unview(out, paths) end
  return out
end

-- The output in the envelope's format (or opts.format): text (bytes for
-- binary) | nil, message. opts.canonical: canonical JSON.
function M.render(env, opts)
  opts = opts or {}
  if env.status ~= "ok" then return nil, "the envelope holds an error, not an output" end
  local fmt = opts.format or (env.metadata and env.metadata.format) or "json"
  return formats.render(M.raw(env), fmt, opts)
end

return M
