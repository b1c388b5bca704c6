-- Argo CD health of an lvs.io RealServerPool (Lua 5.1, as Argo CD's gopher-lua runs it).
--   Degraded     Degraded=True, or the controller cannot use the pool as written: Ready=False
--                for a reason only an edit fixes (Invalid, SelectorUnsupported)
--   Progressing  no status yet, status older than the spec (observedGeneration < generation),
--                or no ready member yet (NoMembers, NoReadyMembers: pods may be starting; the
--                VirtualServer using the pool turns Degraded when its service is down)
--   Healthy      Ready=True for the current generation (at least one member ready)
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
  hs.message = "Waiting for the lvs-operator controller to resolve the pool's members"
  return hs
end

local conditions = obj.status.conditions
local degraded = condition(conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded, "Degraded")
  return hs
end

local ready = condition(conditions, "Ready")
local rejected = { Invalid = true, SelectorUnsupported = true }
if ready ~= nil and ready.status == "False" and rejected[ready.reason] then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. say(ready, "rejected by the controller")
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = say(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = say(ready, "Waiting for ready members")
return hs
