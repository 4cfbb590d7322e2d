-- GET /decision with unit ids as a storefront sends them: new and returning visitors mixed
-- at a set share. Loads report.lua (its one-line JSON report) and adds the request
-- generator. Args: `-- UNITS <new share> <seed>`: each request is a new unit (an id this
-- run never sent, `v<seed>-<thread>-<n>`) with probability <new share>, otherwise a
-- returning one drawn uniformly from the units this thread already sent (the first request
-- is new). The share is the script's, not an accident of how long the run lasts, and the
-- seed keeps runs apart: a later run's new units are new to the server too.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local new_share = 0.25
local seed = 1
local sent = 0

init = function(args)
  if args[1] == "UNITS" then
    new_share = tonumber(args[2])
    seed = tonumber(args[3])
  end
  math.randomseed(seed * 1000 + (thread_id or 0))
end

request = function()
  local n
  if sent == 0 or math.random() < new_share then
    sent = sent + 1
    n = sent
  else
    n = math.random(sent)
  end
  return wrk.format(
    "GET", wrk.path .. "&unit_id=v" .. seed .. "-" .. (thread_id or 0) .. "-" .. n)
end
