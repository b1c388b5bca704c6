-- Argo CD health of an lvs.io VirtualServer (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Degraded means "no traffic can flow", nothing less:
--   Degraded     rejected by the controller (Programmed=False for a reason only an edit
--                fixes: Invalid, VIPNotAllowed, Conflict), or programmed with no real server
--                ready (Ready=False, NoReadyRealServers)
--   Progressing  no status yet, status older than the spec (observedGeneration < generation),
--                not Ready yet (no director holds the VIP yet, the pool is not there yet),
--                or serving while something settles (Degraded=True: RealServersNotReady,
--                e.g. a backend rolling update; MovingToDirectorGroup)
--   Healthy      Ready=True for the current generation, also when Degraded=True says
--                something short of an outage (NoStandbyDirector: a single-director cluster;
--                DirectorNodeShared), which the message then carries
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function say(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then return c.reason end
  return fallback
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the lvs-operator controller to report a status"
  return hs
end

local conditions = obj.status.conditions
local degraded = condition(conditions, "Degraded")
-- Rejections (PoolNotFound is not one: the pool may simply be applied a moment later).
local rejected = { Invalid = true, VIPNotAllowed = true, Conflict = true }
local programmed = condition(conditions, "Programmed")
if programmed ~= nil and programmed.status == "False" and rejected[programmed.reason] then
  hs.status = "Degraded"
  hs.message = programmed.reason .. ": " .. say(programmed, "rejected by the controller")
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  if degraded ~= nil and degraded.status == "True" then
    -- serving: settling (Progressing) or short of an outage (Healthy), said in the message
    local settling = { RealServersNotReady = true, MovingToDirectorGroup = true }
    hs.status = settling[degraded.reason] and "Progressing" or "Healthy"
    hs.message = tostring(degraded.reason) .. ": " .. say(degraded, "degraded")
    return hs
  end
  hs.status = "Healthy"
  hs.message = say(ready, "Ready")
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason == "NoReadyRealServers" then
  hs.status = "Degraded"
  hs.message = say(ready, "no real server is ready")
  return hs
end

hs.status = "Progressing"
if programmed ~= nil and programmed.status ~= "True" then
  hs.message = "Not programmed yet: " .. say(programmed, "waiting for a director")
else
  hs.message = say(ready, "Waiting for the VirtualServer to become Ready")
end
return hs
