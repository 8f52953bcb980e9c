-- spec/redteam/common.lua — what harness.lua and exec.lua share: the tree
-- under test (RD_SOURCE_DIR, else the working directory), its modules on
-- package.path/cpath, and the rduck-worker processes of its build.
local M = {}

local WT = os.getenv("RD_SOURCE_DIR") or os.getenv("PWD")
if WT:sub(1, 1) ~= "/" then WT = os.getenv("PWD") .. "/" .. WT end
M.WT = WT
package.path = WT .. "/lua/?.lua;" .. WT .. "/lua/?/init.lua;" .. package.path
package.cpath = WT .. "/build/?.so;" .. package.cpath

-- How many rduck-worker processes of this build are alive, and their pids.
function M.my_workers()
  local p = io.popen("for p in /proc/[0-9]*; do l=$(readlink $p/exe 2>/dev/null); case \"$l\" in " .. WT .. "/build/rduck-worker*) echo ${p#/proc/};; esac; done")
  local pids = {}
  for l in p:lines() do pids[#pids + 1] = l end
  p:close()
  return #pids, table.concat(pids, ",")
end

return M
