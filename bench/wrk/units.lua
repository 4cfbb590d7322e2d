-- GET /decision with unit ids drawn from a population: new and returning units mix.
-- Loads report.lua (its one-line JSON report) and adds the request generator. Args:
-- `-- UNITS <population> <seed>`; each request appends `&unit_id=v<n>` with n uniform in
-- 1..population (seeded, so runs are reproducible), to the URL's query.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local population = 200000
init = function(args)
  if args[1] == "UNITS" then
    population = tonumber(args[2])
    math.randomseed(tonumber(args[3]))
  end
end

request = function()
  return wrk.format("GET", wrk.path .. "&unit_id=v" .. math.random(population))
end
