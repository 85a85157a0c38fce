-- Argo CD health check for AutoLabelJob (autolabel.dev). Install it in argocd-cm as
-- resource.customizations.health.autolabel.dev_AutoLabelJob (see docs/operations.md, "GitOps with Argo CD").
-- Argo CD sets the global `obj` (the resource) and reads the returned {status, message}.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end

local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = obj.status.message or "Succeeded"
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = obj.status.message or "Failed"
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = obj.status.message or "Suspended"
elseif phase == "Pending" or phase == "Waiting" or phase == "Queued" or phase == "Running" then
  hs.status = "Progressing"
  local percent = 0
  if obj.status.progress ~= nil and type(obj.status.progress.percent) == "number" then
    percent = obj.status.progress.percent
  end
  hs.message = string.format("%s: %d%% done", phase, math.floor(percent))
  if obj.status.message ~= nil and obj.status.message ~= "" then
    hs.message = hs.message .. " - " .. obj.status.message
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
