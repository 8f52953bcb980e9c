-- rubberduck.cli — the rduck command (core/cli/main.c hands it argv).
--
-- Each command has its usage text beside it (COMMANDS below), so
-- `rduck <cmd> --help` and the README come from one place. Exit status:
-- 0 when the envelope's status is "ok", 1 when it is "error", 2 for a usage
-- or definition error (message on stderr).
local rd = require "rubberduck"
local json = require "rubberduck.json"
local core = require "rubberduck.core"

local M = {}

local stdout, stderr = io.stdout, io.stderr

local function eprintf(fmt, ...) stderr:write(string.format(fmt, ...)) end

-- The caller of a local run when no --as/--roles/--caps is given: the
-- operator at the keyboard, who holds every capability.
M.OPERATOR = { principal = "operator", roles = json.array({ "operator" }),
               capabilities = json.array({ "*" }) }

M.COMMANDS = {
  run = {
    usage = "rduck run NAME|FILE [--tools DIR] [--params JSON | --params-file F | key=value ...]\n" ..
            "                   [--as PRINCIPAL] [--roles r1,r2] [--caps c1,c2] [--token T]\n" ..
            "                   [--format json|xml|yaml|binary|plain] [--json] [--data DIR]",
    help = [[
Run one tool through the whole pipeline and print its output.

  NAME|FILE            a tool name (looked up in --tools DIR, default ./tools)
                       or the path of a tool file
  --params JSON        the parameters as a JSON object
  --params-file F      the same, read from a file (- for standard input)
  key=value            one parameter; the value is read as JSON when it is
                       valid JSON (42, true, [1,2]), else taken as a string
  --as PRINCIPAL       run as this caller (default: the local operator, who
  --roles r1,r2        holds every capability); with any of these three,
  --caps c1,c2         the caller holds exactly what they say
  --token T            a signed capability token (not available in this build)
  --format F           how to print the output (default: the tool's
                       output.format): json or plain
  --json               print the whole result envelope as JSON
  --data DIR           data directory (default ./.rduck)
  --timeout MS         an overall deadline for the call, over all attempts

Exit status: 0 ok, 1 the call ended in an error envelope, 2 usage or
definition error.]],
  },
  tools = {
    usage = "rduck tools [--tools DIR] [--json]",
    help = [[
List the tools of DIR (default ./tools): name, security level, description.
  --json   print the normalized definitions (schemas/tool.schema.json)
Exit status 2 if any tool failed to load (the others are still listed).]],
  },
  check = {
    usage = "rduck check FILE|DIR...",
    help = [[
Load tool definitions and report every problem as file: field.path: reason.
A keyword that the parameters or output schema's draft does not define
("minimun", "requried") is a warning, with its schema path and the keyword
probably meant: the tool still loads (JSON Schema ignores such keywords).
Exit status 0 when all load, 2 on any problem (warnings do not count).]],
  },
  repl = {
    usage = "rduck repl [--tools DIR] [--data DIR]",
    help = [[
An interactive LuaJIT prompt with the engine loaded. Line editing and
history (~/.rduck_history) on a terminal; reads statements from a pipe too.
  tools()                     list the tools
  run(name, params [, caller]) run one, print the envelope
  reload()                    load the tools again
  engine, json                the engine and the JSON codec
  help()                      this text]],
  },
  demo = {
    usage = "rduck demo [--tools DIR] [--json]",
    help = [[
Run every example of every bundled tool (metadata.examples) through the
pipeline and compare each result with the example's expected output or
error kind. Exit status 0 when all match, 1 otherwise.]],
  },
  version = {
    usage = "rduck version",
    help = "Print the version of rduck and of the libraries it runs on.",
  },
}

local ORDER = { "run", "tools", "check", "repl", "demo", "version" }

local function main_usage()
  local lines = { "usage: rduck <command> [options]", "", "commands:" }
  for _, c in ipairs(ORDER) do lines[#lines + 1] = "  " .. M.COMMANDS[c].usage end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "rduck <command> --help tells more."
  return table.concat(lines, "\n") .. "\n"
end

-- ---- argument parsing --------------------------------------------------------------

-- spec: flag -> "value" | "bool". Returns opts, positionals | nil, error.
local function parse(args, spec)
  local opts, pos = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      opts.help = true
    elseif a:sub(1, 2) == "--" then
      local name, val = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local kind = spec[name]
      if not kind then return nil, "unknown option --" .. name end
      if kind == "bool" then
        if val then return nil, "--" .. name .. " takes no value" end
        opts[name] = true
      else
        if not val then
          i = i + 1
          val = args[i]
          if val == nil then return nil, "--" .. name .. " needs a value" end
        end
        opts[name] = val
      end
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return opts, pos
end

local function split_list(s)
  local out = json.array({})
  for item in s:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

local function caller_from(opts)
  if opts.token then
    return nil, "--token: signed capability tokens are not available in this build yet"
  end
  if not (opts.as or opts.roles or opts.caps) then return M.OPERATOR end
  return {
    principal = opts.as or "anonymous",
    roles = opts.roles and split_list(opts.roles) or json.array({}),
    capabilities = opts.caps and split_list(opts.caps) or json.array({}),
  }
end

local function read_all(path)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then return nil, err end
  local s = f:read("*a")
  if f ~= io.stdin then f:close() end
  return s
end

local function params_from(opts, kv)
  local params
  if opts.params and opts["params-file"] then
    return nil, "give --params or --params-file, not both"
  end
  local text, origin = opts.params, "--params"
  if opts["params-file"] then
    local err
    text, err = read_all(opts["params-file"])
    if not text then return nil, "--params-file: " .. tostring(err) end
    origin = "--params-file"
  end
  if text then
    local v, err = json.decode(text)
    if v == nil then return nil, origin .. ": " .. err end
    if type(v) ~= "table" or (json.is_array(v) and next(v) ~= nil) or getmetatable(v) == json.array_mt then
      return nil, origin .. ": expected a JSON object"
    end
    params = v
  end
  for _, pair in ipairs(kv) do
    local k, v = pair:match("^([^=]+)=(.*)$")
    if not k then return nil, "expected key=value, got " .. pair end
    params = params or {}
    local decoded = json.decode(v)
    if decoded == nil and v ~= "null" then decoded = v end
    params[k] = decoded
  end
  return params or {}
end

local function is_file(p)
  local f = io.open(p, "rb")
  if not f then return false end
  local ok = f:read(0) ~= nil or f:seek("end") ~= nil
  f:close()
  return ok and core.listdir(p) == nil
end

local function bundled_tools_dir()
  return rd.root_dir() .. "/tools"
end

-- ---- output -----------------------------------------------------------------------------

local function plain(v, indent, out)
  indent = indent or ""
  out = out or {}
  if type(v) ~= "table" then
    out[#out + 1] = indent .. (v == json.null and "null" or tostring(v))
    return out
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  local width = 0
  for _, k in ipairs(keys) do
    if #tostring(k) > width then width = #tostring(k) end
  end
  for _, k in ipairs(keys) do
    local val = v[k]
    local label = tostring(k) .. string.rep(" ", width - #tostring(k))
    if type(val) == "table" then
      out[#out + 1] = indent .. label .. ":"
      plain(val, indent .. "  ", out)
    else
      out[#out + 1] = indent .. label .. "  " .. (val == json.null and "null" or tostring(val))
    end
  end
  return out
end

function M.render(value, format)
  if format == "plain" then
    if type(value) == "string" then return value end
    if value == nil or value == json.null then return "" end
    return table.concat(plain(value), "\n")
  end
  return assert(json.encode(value == nil and json.null or value, { pretty = true, sort_keys = true }))
end

local SUPPORTED_FORMATS = { json = true, plain = true }

local function print_problems(problems)
  for _, p in ipairs(problems) do eprintf("%s\n", p) end
end

local function open_engine(opts, files)
  local tools_dir = opts.tools
  if not tools_dir and not files then
    local d = "tools"
    if core.listdir(d) then tools_dir = d end
  end
  return rd.open({ tools = tools_dir, files = files, data_dir = opts.data, entry = "cli" })
end

local function print_logs(engine)
  engine:subscribe("execution.log", function(ev)
    eprintf("[%s] %s\n", ev.metadata.level or "info", ev.metadata.message or "")
  end)
end

-- ---- commands --------------------------------------------------------------------------

local handlers = {}

function handlers.run(args)
  local opts, pos = parse(args, { tools = "value", params = "value", ["params-file"] = "value",
    as = "value", roles = "value", caps = "value", token = "value", format = "value",
    json = "bool", data = "value", timeout = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  local target = table.remove(pos, 1)
  if not target then return nil, "run: name the tool (NAME or FILE)" end
  if opts.format and not SUPPORTED_FORMATS[opts.format] then
    if ({ xml = true, yaml = true, binary = true })[opts.format] then
      return nil, "--format " .. opts.format .. ": not available in this build yet (json, plain)"
    end
    return nil, "--format: expected one of json, xml, yaml, binary, plain, got " .. opts.format
  end
  local caller, cerr = caller_from(opts)
  if not caller then return nil, cerr end
  local params, perr = params_from(opts, pos)
  if not params then return nil, perr end
  local timeout
  if opts.timeout then
    timeout = tonumber(opts.timeout)
    if not timeout or timeout <= 0 then return nil, "--timeout: expected milliseconds > 0" end
  end

  local files, name
  if target:match("%.lua$") or target:find("/", 1, true) then
    if not is_file(target) then return nil, target .. ": no such tool file" end
    files = { target }
  else
    name = target
  end
  local engine, oerr = open_engine(opts, files)
  if not engine then return nil, oerr end
  if files then
    -- A file run: its own problems are fatal; the name comes from the file.
    for _, t in ipairs(engine.registry:list()) do
      if t.file == target then name = t.name end
    end
    if not name then
      print_problems(engine.problems)
      engine:close()
      return 2
    end
  elseif #engine.problems > 0 and not engine:tool(name) then
    print_problems(engine.problems)
  end
  print_logs(engine)
  local env = engine:execute(name, params, caller, { format = opts.format, entry = "cli",
    deadline_ms = timeout })
  if opts.json then
    stdout:write(json.encode(env, { pretty = true, sort_keys = true }), "\n")
  elseif env.status == "ok" then
    local fmt = env.metadata.format
    if not SUPPORTED_FORMATS[fmt] then fmt = "json" end
    local text = M.render(env.output, fmt)
    stdout:write(text)
    if text:sub(-1) ~= "\n" then stdout:write("\n") end
  else
    eprintf("error: %s: %s\n", env.error.kind, env.error.message)
    local details = env.error.details
    if type(details) == "table" and type(details.errors) == "table" then
      for _, e in ipairs(details.errors) do
        eprintf("  %s (%s)\n", e.message, e.schema_path or e.keyword or "")
      end
    end
  end
  engine:close()
  return env.status == "ok" and 0 or 1
end

function handlers.tools(args)
  local opts, pos = parse(args, { tools = "value", json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos > 0 then return nil, "tools: unexpected argument " .. pos[1] end
  local dir = opts.tools or "tools"
  if not core.listdir(dir) then return nil, "--tools: " .. dir .. ": no such directory" end
  local engine = assert(rd.open({ tools = dir, data_dir = opts.data, entry = "cli" }))
  local defs = engine:tools()
  if opts.json then
    stdout:write(json.encode(defs, { pretty = true, sort_keys = true }), "\n")
  else
    local w = 4
    for _, d in ipairs(defs) do if #d.metadata.name > w then w = #d.metadata.name end end
    for _, d in ipairs(defs) do
      stdout:write(string.format("%-" .. w .. "s  %-8s  %s\n", d.metadata.name,
        d.security.level, d.metadata.description))
    end
  end
  print_problems(engine.problems)
  local code = #engine.problems > 0 and 2 or 0
  engine:close()
  return code
end

function handlers.check(args)
  local opts, pos = parse(args, {})
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos == 0 then return nil, "check: name at least one FILE or DIR" end
  local engine = assert(rd.open({ entry = "cli" }))
  local n, problems = 0, 0
  for _, p in ipairs(pos) do
    local ok, probs
    if core.listdir(p) then
      ok, probs = engine:load_tools(p)
    elseif is_file(p) then
      ok, probs = engine:load_tools(nil, { p })
    else
      ok, probs = false, { p .. ": (file): no such file or directory" }
    end
    print_problems(probs)
    problems = problems + #probs
  end
  for _, w in ipairs(engine.warnings) do eprintf("warning: %s\n", w) end
  n = #engine.registry:list()
  engine:close()
  if problems > 0 then
    eprintf("%d problem%s\n", problems, problems == 1 and "" or "s")
    return 2
  end
  stdout:write(string.format("ok: %d tool%s\n", n, n == 1 and "" or "s"))
  return 0
end

-- Deep equality for comparing example outputs (arrays vs objects matter).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then
    if type(a) == "number" and type(b) == "number" then return math.abs(a - b) < 1e-9 end
    return false
  end
  if json.is_array(a) ~= json.is_array(b) and (next(a) ~= nil or next(b) ~= nil) then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
M.same = same

function handlers.demo(args)
  local opts, pos = parse(args, { tools = "value", json = "bool", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos > 0 then return nil, "demo: unexpected argument " .. pos[1] end
  local dir = opts.tools or bundled_tools_dir()
  local engine, oerr = rd.open({ tools = dir, data_dir = opts.data, entry = "cli" })
  if not engine then return nil, oerr end
  print_problems(engine.problems)
  local pass, fail, results = 0, 0, json.array({})
  for _, d in ipairs(engine:tools()) do
    for i, ex in ipairs(d.metadata.examples) do
      local env = engine:execute(d.metadata.name, ex.params, M.OPERATOR, { entry = "cli" })
      local ok, why
      if ex.error then
        ok = env.status == "error" and env.error.kind == ex.error
        why = ok and "" or ("expected error " .. ex.error .. ", got " ..
          (env.status == "ok" and "ok" or env.error.kind .. ": " .. env.error.message))
      else
        ok = env.status == "ok" and (ex.output == nil or same(env.output, ex.output))
        why = ok and "" or (env.status == "ok"
          and ("output " .. json.encode(env.output) .. " differs from " .. json.encode(ex.output))
          or (env.error.kind .. ": " .. env.error.message))
      end
      if ok then pass = pass + 1 else fail = fail + 1 end
      results[#results + 1] = { tool = d.metadata.name, example = i, ok = ok, reason = why,
        envelope = env }
      if not opts.json then
        stdout:write(string.format("%s %s #%d%s  %.2f ms%s\n", ok and "PASS" or "FAIL",
          d.metadata.name, i, ex.description and (" (" .. ex.description .. ")") or "",
          env.metadata.duration_ms, ok and "" or ("\n     " .. why)))
      end
    end
  end
  if opts.json then
    stdout:write(json.encode({ passed = pass, failed = fail, results = results }, { pretty = true, sort_keys = true }), "\n")
  else
    stdout:write(string.format("demo: %d passed, %d failed\n", pass, fail))
  end
  local code = (fail > 0 or #engine.problems > 0) and 1 or 0
  engine:close()
  return code
end

function handlers.version(args)
  local opts, pos = parse(args, {})
  if not opts then return nil, pos end
  if opts.help then return "help" end
  stdout:write(string.format("rduck %s (%s)\n", rd.version, jit and jit.version or _VERSION))
  return 0
end

function handlers.repl(args)
  local opts, pos = parse(args, { tools = "value", data = "value" })
  if not opts then return nil, pos end
  if opts.help then return "help" end
  if #pos > 0 then return nil, "repl: unexpected argument " .. pos[1] end
  return require("rubberduck.repl").run(opts, M)
end

function M.main(args)
  local cmd = args[1]
  if cmd == nil or cmd == "--help" or cmd == "-h" or cmd == "help" then
    local sub = args[2] and M.COMMANDS[args[2]]
    if sub then
      stdout:write("usage: ", sub.usage, "\n\n", sub.help, "\n")
    else
      (cmd == nil and stderr or stdout):write(main_usage())
    end
    return cmd == nil and 2 or 0
  end
  if cmd == "--version" then cmd = "version" end
  local h = handlers[cmd]
  if not h then
    eprintf("rduck: unknown command %q\n%s", cmd, main_usage())
    return 2
  end
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  local code, err = h(rest)
  if code == "help" then
    local c = M.COMMANDS[cmd]
    stdout:write("usage: ", c.usage, "\n\n", c.help, "\n")
    return 0
  end
  if code == nil then
    eprintf("rduck %s: %s\nusage: %s\n", cmd, err, M.COMMANDS[cmd].usage)
    return 2
  end
  return code
end

return M
