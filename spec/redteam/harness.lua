-- Independent red-team harness (issues 4 and 5, "Checked by"): runs the
-- hostile tools of cases.lua at each level through the Lua API and through
-- `build/rduck run`, and checks per run: the error kind, no secret or
-- denied path in the message or output, the engine still serving a ping
-- tool (whose string library must be intact), and no rduck-worker of this
-- build left. Not part of ctest (it takes ~15 minutes and checks processes
-- machine-wide for this build: run it alone). From the repository root:
--
--   luajit spec/redteam/harness.lua [NAME-PATTERN|all] [strict,balanced,relaxed,none]
--   luajit spec/redteam/exec.lua [NAME-PATTERN|all] [levels]   (executor scenarios)
--   spec/redteam/sig.sh                                        (after exec.lua: kill rduck mid-call)
--
-- RD_REDTEAM_DIR (default /tmp/rdh) holds the generated tools and data.
local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local WT = common.WT
local rd = require "rubberduck"
local json = require "rubberduck.json"

local BASE = (os.getenv("RD_REDTEAM_DIR") or "/tmp/rdh") .. "/run"
local ROOT = BASE .. "/root"
os.execute("rm -rf " .. BASE .. " && mkdir -p " .. ROOT .. "/sub && echo secretdata > " .. BASE .. "/outside.txt")
os.execute("ln -s /etc " .. ROOT .. "/etc_link; ln -s " .. BASE .. "/outside.txt " .. ROOT .. "/out_link")
os.execute("mkfifo " .. ROOT .. "/fifo; ln -s /proc/self/mem " .. ROOT .. "/mem_link")
os.execute("echo hi > " .. ROOT .. "/sub/f.txt; mkdir -p " .. ROOT .. "-evil && echo evil > " .. ROOT .. "-evil/x")
os.execute("ln " .. BASE .. "/outside.txt " .. ROOT .. "/hard_link 2>/dev/null")

os.execute("mkdir -p " .. ROOT .. "/swapdir && echo fine > " .. ROOT .. "/swapdir/outside.txt")
local SWAP = (string.format("(while :; do mv -T %s/swapdir %s/swap 2>/dev/null; mv -T %s/swap %s/swapdir 2>/dev/null; ln -sfn %s %s/swap; rm -f %s/swap; done) >/dev/null 2>&1 & echo $! > %s/swapper.pid",
  ROOT, ROOT, ROOT, ROOT, BASE, ROOT, ROOT, BASE))
local only = arg[1]
local LEVELS = { "strict", "balanced", "relaxed", "none" }
if arg[2] then LEVELS = {} for l in arg[2]:gmatch("[^,]+") do LEVELS[#LEVELS + 1] = l end end
local cases = dofile(WT .. "/spec/redteam/cases.lua")(ROOT, BASE)

local function tool_src(c, level)
  return string.format([[
return tool {
  metadata = { name = %q, description = "hostile" },
  security = { level = %q, max_cpu = %d, max_memory = %d, allowed_paths = { %q } %s },
  execution = { timeout = %d, retries = %d %s, handler = %s },
  %s
}]], c.name, level, c.max_cpu or 1000, c.max_memory or 33554432, ROOT, c.security or "",
    c.timeout or 4000, c.retries or 0, c.execution or "", c.handler, c.extra or "")
end

local my_workers = common.my_workers

local TOOLS = BASE .. "/tools"
os.execute("mkdir -p " .. TOOLS)
for _, level in ipairs(LEVELS) do
  os.execute("mkdir -p " .. TOOLS .. "/" .. level)
  local f = io.open(TOOLS .. "/" .. level .. "/ping.lua", "w")
  f:write(string.format([[
return tool { metadata = { name = "ping", description = "p" }, security = { level = %q },
  execution = { handler = function(p)
    return { ok = true, smt = tostring(("x"):upper() == "X"), rep = ("ab"):rep(2),
      up = string.upper("x"), g = tostring(rawget(_G, "POISON")), tc = type(table.concat),
      mf = tostring(math.floor(1.5)) }
  end } }]], level))
  f:close()
end

local function kind_of(env)
  if not env then return "NIL" end
  if env.status == "ok" then return "ok" end
  if type(env.error) ~= "table" then return "?" end
  return env.error and env.error.kind or "?"
end

local function ping_ok(env)
  return env and env.status == "ok" and type(env.output) == "table" and env.output.smt == "true" and env.output.rep == "abab"
    and env.output.up == "X" and env.output.g == "nil" and env.output.mf == "1"
end

local results = {}
local function record(r) results[#results + 1] = r; io.stdout:write(r.line .. "\n"); io.stdout:flush() end

for _, c in ipairs(cases) do
  if not only or only == "all" or c.name:find(only) then
    for _, level in ipairs(LEVELS) do
      if not (c.levels and not c.levels[level]) then
        local dir = TOOLS .. "/" .. level .. "/" .. c.name
        os.execute("mkdir -p " .. dir .. " && cp " .. TOOLS .. "/" .. level .. "/ping.lua " .. dir .. "/")
        local f = assert(io.open(dir .. "/" .. c.name .. ".lua", "w"))
        f:write(tool_src(c, level))
        f:close()
        local want = c.expect[level] or c.expect["*"]
        if c.swap then os.execute(SWAP) end
        -- Lua API
        local t0 = os.time()
        local engine, err = rd.open { tools = dir, data_dir = BASE .. "/data-" .. level }
        local env, kind, note = nil, "OPEN-FAIL", tostring(err)
        if engine then
          if #engine.problems > 0 then note = table.concat(engine.problems, ";") end
          local okc, res = pcall(function()
            if c.drive then return c.drive(engine, level) end
            local e = engine:execute(c.name, c.params or {})
            if c.again then e = engine:execute(c.name, c.params or {}) end
            return e
          end)
          if okc then env = res; kind = kind_of(env) else kind = "HARNESS-ERR"; note = tostring(res) end
          local pe = engine:execute("ping", {})
          local serving = ping_ok(pe)
          local msg = env and type(env.error) == "table" and tostring(env.error.message) or ""
          local outtxt = env and env.output ~= nil and tostring(json.encode(env.output)) or ""
          local leaked = not c.allow_leak and (msg .. outtxt):find("secretdata") or (msg):find("/etc/", 1, true)
            or (msg):find("outside.txt", 1, true)
          local extra = c.check and c.check(env, level) or nil
          engine:close()
          local nw, pids = my_workers()
          local good = (want == nil or want == kind or (type(want) == "table" and want[kind]))
            and serving and not leaked and (extra == nil or extra == true) and nw == 0
          record { name = c.name, level = level, via = "api", kind = kind, good = good,
            line = string.format("%-4s %-22s %-8s api  kind=%-17s want=%-17s serving=%s leak=%s workers=%d%s %s | %s",
              good and "OK" or "FAIL", c.name, level, kind, type(want) == "table" and "{set}" or tostring(want),
              tostring(serving), leaked and "YES" or "no", nw, nw > 0 and ("(" .. pids .. ")") or "",
              extra ~= nil and extra ~= true and ("check=" .. tostring(extra)) or "",
              (msg .. " " .. (note or "")):sub(1, 300):gsub("\n", " ")) }
        else
          record { name = c.name, level = level, via = "api", kind = kind, good = false,
            line = "FAIL " .. c.name .. " " .. level .. " open: " .. note }
        end
        if c.swap then os.execute("kill $(cat " .. BASE .. "/swapper.pid)") end
        -- CLI
        if not c.no_cli then
          local cmd = string.format("cd %s && timeout 60 %s/build/rduck run %s --tools %s --data %s/cli-data --json %s 2>%s/cli.err",
            dir, WT, c.name, dir, BASE, c.cli_params and ("--params '" .. c.cli_params .. "'") or "", BASE)
          local p = io.popen(cmd .. "; echo RC=$?")
          local out = p:read("*a")
          p:close()
          local code = tonumber(out:match("RC=(%d+)%s*$"))
          out = out:gsub("RC=%d+%s*$", "")
          local cenv = json.decode(out)
          local ckind = type(cenv) == "table" and kind_of(cenv) or ("NOJSON rc=" .. tostring(code))
          local cmsg = type(cenv) == "table" and type(cenv.error) == "table" and cenv.error.message or io.open(BASE .. "/cli.err"):read("*a")
          local leaked = not c.allow_leak and (cmsg .. out):find("secretdata") or cmsg:find("/etc/", 1, true) or cmsg:find("outside.txt", 1, true)
          local nw = my_workers()
          local expcode = (ckind == "ok") and 0 or 1
          if code ~= expcode then
            -- keep what rduck said (exit 3: "rduck: internal error: ..." on stderr)
            local ef = io.open(BASE .. "/cli.err")
            local etext = ef and ef:read("*a") or ""
            if ef then ef:close() end
            local kf = io.open(BASE .. "/cli-" .. c.name .. "-" .. level .. ".err", "w")
            if kf then kf:write(etext); kf:close() end
            cmsg = "stderr: " .. etext .. " | " .. cmsg
          end
          local good = (want == nil or want == ckind or (type(want) == "table" and want[ckind])) and not leaked
            and nw == 0 and code == expcode
          record { name = c.name, level = level, via = "cli", kind = ckind, good = good,
            line = string.format("%-4s %-22s %-8s cli  kind=%-17s rc=%s leak=%s workers=%d %s",
              good and "OK" or "FAIL", c.name, level, ckind, tostring(code), leaked and "YES" or "no", nw,
              cmsg:sub(1, 140):gsub("\n", " ")) }
        end
      end
    end
  end
end
local nf = 0
for _, r in ipairs(results) do if not r.good then nf = nf + 1 end end
print(string.format("== %d runs, %d not as expected", #results, nf))
