-- rubberduck.validator — JSON Schema (draft 2020-12 and draft-07) validation,
-- compiled to Lua source. Pure Lua on LuaJIT: usable without the engine.
--
--   local validator = require "rubberduck.validator"
--   local v, err = validator.compile(schema, opts)   -- nil, "/path: why" on a bad schema
--   local ok, errors = v(instance)                    -- errors[i] = { pointer, keyword, schema_path, message }
--   print(v:source())                                 -- the generated Lua
--   local r = v:partial(instance)                     -- { valid, complete, errors, pending }
--
-- opts (all optional):
--   all_errors  true (default): collect errors, at most max_errors (default 100);
--               false: stop at the first error
--   formats     "assert" (default): known formats are checked; "annotate": ignored
--   defaults    true: fill missing properties from `default` (mutates the
--               instance, copying table defaults); default false
--   draft       "2020-12" | "07": overrides $schema (default: $schema, else
--               default_draft, else 2020-12)
--   default_draft  the draft of a schema without $schema
--   store       a schema store (validator.new_store()) for $ref to other
--               schemas; default: validator.store. No network, ever.
--   base_uri    base URI of a schema without $id
--   unknown_keywords  what to do with keywords the schema's draft does not
--               define ("minimun", "requried"): "ignore" (default; the
--               standard makes them annotations), "warn" (compile, and list
--               them in v.warnings), "error" (refuse the schema)
--
-- v.warnings: { {path, keyword, suggestion, message}, ... } with
-- unknown_keywords = "warn" (empty otherwise); message reads
-- '/properties/age: unknown keyword "minimun" (did you mean "minimum"?)'.
--
-- Data model: JSON null is the NULL light userdata (rubberduck.core.json.null,
-- cjson.null); arrays carry the "rubberduck.json.array" registry metatable,
-- or are unmarked tables with keys exactly 1..n (n > 0); an empty unmarked
-- table is an object. "integer" means a finite number with no fraction.

local compiler = require "rubberduck.validator.compiler"
local keywords = require "rubberduck.validator.keywords"
local runtime = require "rubberduck.validator.runtime"
local uri = require "rubberduck.validator.uri"

local M = {}

local type, setmetatable, pcall, load, getmetatable, ipairs = type, setmetatable, pcall, load, getmetatable, ipairs

M.null = runtime.NULL
M.unknown_keywords = keywords.unknown
M.is_array = runtime.isarr

-- array(t) -> t marked as a JSON array (so an empty one is not an object)
function M.array(t)
  return setmetatable(t or {}, runtime.array_mt())
end

local DRAFT_NAMES = {
  ["2020-12"] = compiler.D2020, ["draft2020-12"] = compiler.D2020, ["draft-2020-12"] = compiler.D2020,
  ["07"] = compiler.D07, ["7"] = compiler.D07, ["draft7"] = compiler.D07, ["draft-07"] = compiler.D07,
}

-----------------------------------------------------------------------------
-- Schema store: schemas known by URI. Nothing is ever fetched: a $ref to a
-- URI that is neither registered nor produced by the store's loader is a
-- compile error that names it.

local Store = {}
Store.__index = Store

-- new_store{ loader = function(uri) return schema_or_nil end }
function M.new_store(o)
  return setmetatable({ schemas = {}, loader = o and o.loader }, Store)
end

-- add(schema [, uri]): register under uri, else under the schema's $id
function Store:add(schema, u)
  u = u or (type(schema) == "table" and schema["$id"])
  if type(u) ~= "string" then return nil, "schema has no $id and no URI was given" end
  self.schemas[(uri.split(u))] = schema
  return true
end

function Store:get(u)
  local s = self.schemas[u]
  if s == nil and self.loader then
    s = self.loader(u)
    if s ~= nil then self.schemas[u] = s end
  end
  return s
end

-- decode JSON text keeping [] apart from {} and null as the NULL sentinel
function M.decode_json(text)
  local ok, core = pcall(require, "rubberduck.core")
  if ok and type(core) == "table" and type(core.json) == "table" and core.json.decode then
    return core.json.decode(text)
  end
  local okd, dkjson = pcall(require, "dkjson")
  if okd then
    local v, _, err = dkjson.decode(text, 1, runtime.NULL, nil, runtime.array_mt())
    if err then return nil, err end
    return v
  end
  return require("cjson").decode(text)
end

-- add_file(path [, uri]): read a JSON schema file and register it
function Store:add_file(path, u)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  local ok, schema = pcall(M.decode_json, text)
  if not ok or schema == nil then return nil, path .. ": invalid JSON: " .. tostring(schema) end
  if u == nil and (type(schema) ~= "table" or type(schema["$id"]) ~= "string") then
    u = "file://" .. (path:sub(1, 1) == "/" and path or ((os.getenv("PWD") or ".") .. "/" .. path))
  end
  local aok, err = self:add(schema, u)
  if not aok then return nil, path .. ": " .. err end
  return true
end

-- list the *.json files of a directory (LuaJIT FFI over opendir/readdir:
-- no extra module needed)
local function json_files(dir)
  local cok, core = pcall(require, "rubberduck.core")
  if cok and core.listdir then
    local names, lerr = core.listdir(dir)
    if not names then return nil, dir .. ": " .. tostring(lerr) end
    local out = {}
    for _, name in ipairs(names) do
      if name:match("%.json$") then out[#out + 1] = name end
    end
    table.sort(out)
    return out
  end
  local ok, ffi = pcall(require, "ffi")
  if not ok then return nil, "listing a directory needs LuaJIT's ffi" end
  if not M._dirent then
    pcall(ffi.cdef, [[
      typedef struct rd_validator_DIR rd_validator_DIR;
      struct rd_validator_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;
                                   unsigned char d_type; char d_name[256]; };
      rd_validator_DIR *opendir(const char *name);
      struct rd_validator_dirent *readdir(rd_validator_DIR *d);
      int closedir(rd_validator_DIR *d);
    ]])
    M._dirent = true
  end
  local d = ffi.C.opendir(dir)
  if d == nil then return nil, dir .. ": cannot open directory" end
  local out = {}
  while true do
    local e = ffi.C.readdir(d)
    if e == nil then break end
    local name = ffi.string(e.d_name)
    if name:match("%.json$") then out[#out + 1] = name end
  end
  ffi.C.closedir(d)
  table.sort(out)
  return out
end

-- add_dir(dir): register every *.json schema of dir (not recursive) by its
-- $id, or as file://<absolute path> when it has none
function Store:add_dir(dir)
  local files, err = json_files(dir)
  if not files then return nil, err end
  for _, name in ipairs(files) do
    local path = dir .. "/" .. name
    local ok, aerr = self:add_file(path)
    if not ok then return nil, aerr end
  end
  return #files
end

M.store = M.new_store()

function M.register(schema, u) return M.store:add(schema, u) end

-----------------------------------------------------------------------------
-- Validators

local V = {}
V.__index = V

V.__call = function(self, instance)
  local ok, errs = self._run(instance, self._all, self._max, false)
  if ok then return true end
  return false, errs or runtime.invalid()
end

-- v:validate(instance): the same as v(instance)
function V:validate(instance)
  local ok, errs = self._call(self, instance)
  return ok, errs
end

-- the generated Lua source
function V:source() return self._src end

-- partial(instance): validate what is present, for input that arrives
-- piece by piece. What more input may still satisfy is pending, not an
-- error: missing required properties (required, dependentRequired), and
-- minItems, minProperties, minContains not reached yet. Inside anyOf and
-- oneOf, a branch that holds but for pendings is still possible: the
-- pendings of the branch the instance aims at are reported; an "if" that
-- holds only with pendings applies neither then nor else, and a "not" is
-- not failed by them. Returns { valid, complete, errors, pending }:
-- valid = no error in what is present, complete = the instance as it
-- stands passes v(instance).
function V:partial(instance)
  local ok, errs, pend, met = self._run(instance, self._all, self._max, true)
  local complete = ok and pend == nil
  if complete and met > 0 then
    -- pendings inside branches that did not decide the outcome (a complete
    -- anyOf branch beside an incomplete one): the full check decides
    complete = self._run(instance, self._all, self._max, false) and true or false
  end
  return {
    valid = ok,
    complete = complete,
    errors = errs or {},
    pending = pend or {},
  }
end

local function draft_of(schema, opts)
  if opts.draft then
    local d = DRAFT_NAMES[opts.draft]
    if not d then return nil, "unknown draft " .. tostring(opts.draft) end
    return d
  end
  if type(schema) == "table" and type(schema["$schema"]) == "string" then
    local d = compiler.DRAFT_OF[(uri.split(schema["$schema"]))]
    if d then return d end
  end
  if opts.default_draft then
    local d = DRAFT_NAMES[opts.default_draft]
    if not d then return nil, "unknown draft " .. tostring(opts.default_draft) end
    return d
  end
  return compiler.D2020
end

function M.compile(schema, opts)
  opts = opts or {}
  local o = {
    all_errors = opts.all_errors ~= false,
    max_errors = opts.max_errors or 100,
    formats = opts.formats or "assert",
    defaults = opts.defaults and true or false,
  }
  if o.formats ~= "assert" and o.formats ~= "annotate" then
    return nil, "opts.formats must be \"assert\" or \"annotate\""
  end
  local unknown = opts.unknown_keywords or "ignore"
  if unknown ~= "ignore" and unknown ~= "warn" and unknown ~= "error" then
    return nil, "opts.unknown_keywords must be \"ignore\", \"warn\" or \"error\""
  end
  if type(schema) ~= "boolean" and (type(schema) ~= "table" or (runtime.isarr(schema))) then
    return nil, "/: a schema must be an object or a boolean"
  end
  local draft, derr = draft_of(schema, opts)
  if not draft then return nil, derr end
  local warnings = {}
  if unknown ~= "ignore" then
    warnings = keywords.unknown(schema, draft, not opts.draft and compiler.DRAFT_OF or nil)
    if unknown == "error" and warnings[1] then return nil, warnings[1].message end
  end
  local store = opts.store or M.store
  local flags = {}
  for _ = 1, 4 do
    local c = compiler.new(o, store)
    c.default_draft = draft
    c.force_draft = opts.draft and draft or nil
    c.has_dynref = flags.has_dynref
    c.ftable = flags.ftable
    c.unroll, c.noinline = flags.unroll, flags.noinline
    local ok, src = pcall(function()
      local base = opts.base_uri or "urn:rubberduck:schema"
      c.root_uri = base
      c.root_schema = schema
      c:index(schema, base, draft)
      local inf = type(schema) == "table" and c.info[schema]
      if inf then c.root_uri = inf.res end
      return c:generate(schema)
    end)
    if not ok then
      if getmetatable(src) == compiler.CompileError then
        return nil, (src.path == "" and "/" or src.path) .. ": " .. src.msg
      end
      return nil, "internal error compiling schema: " .. tostring(src)
    end
    local again = false
    if c.has_dynref and not flags.has_dynref then flags.has_dynref = true; again = true end
    if (#c.order > 100 or c.too_many_upvalues) and not flags.ftable then flags.ftable = true; again = true end
    local chunk, lerr
    if not again then
      chunk, lerr = load(src, "=validator", "t")
      if not chunk and not flags.unroll then
        -- a function too big for the bytecode (jumps too long): again,
        -- with loops only (no written-out steps) and a function per subschema
        flags.unroll, flags.noinline = 0, true
        again = true
      elseif not chunk then
        return nil, "internal error loading generated code: " .. lerr
      end
    end
    if not again then
      local run, call = chunk(runtime, c.K)
      -- each validator has its own metatable, whose __call is the entry
      -- point in its generated chunk: when it is called from interpreted
      -- code (right after a C function such as a JSON decoder), LuaJIT
      -- starts a trace there that belongs to this schema alone, instead of
      -- one trace of a shared __call whose exits all schemas would compete for
      local mt = { __index = V, __call = call, __name = "rubberduck.validator" }
      return setmetatable({ _run = run, _call = call, _src = src, _all = o.all_errors, _max = o.max_errors,
                            draft = draft, warnings = warnings }, mt)
    end
  end
  return nil, "internal error: schema compilation did not settle"
end

-- compile_tool(def, file) -> params validator, output validator | nil,
-- warnings | nil, problem: the schemas of a tool definition as the engine
-- uses them (defaults filled into params). A bad schema is a problem
-- ("FILE: parameters: /path: why"); an unknown keyword is a warning
-- ("FILE: parameters: /properties/age: unknown keyword \"minimun\" (did
-- you mean \"minimum\"?)").
function M.compile_tool(def, file)
  local warnings = {}
  local function one(schema, field, o)
    o.unknown_keywords = "warn"
    local v, err = M.compile(schema, o)
    if not v then return nil, file .. ": " .. field .. ": " .. tostring(err) end
    for _, w in ipairs(v.warnings) do warnings[#warnings + 1] = file .. ": " .. field .. ": " .. w.message end
    return v
  end
  local v, err = one(def.parameters, "parameters", { defaults = true })
  if not v then return nil, err end
  local ov
  if def.output and def.output.schema ~= nil then
    ov, err = one(def.output.schema, "output.schema", {})
    if not ov then return nil, err end
  end
  return v, ov, warnings
end

return M
