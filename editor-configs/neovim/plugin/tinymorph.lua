-- :Tinymorph* commands. Nothing starts until require('tinymorph').setup() is called (see lua/tinymorph/init.lua).
local function tm()
  return require('tinymorph')
end

-- Arguments are checked here (`abc is not a number`, a strength past the server's bound) before anything is sent.
local function usage(text)
  vim.notify('tinymorph: ' .. text, vim.log.levels.ERROR)
end

local function feature_and_strength(a, name)
  local feature, why = tm().feature(a.fargs[1])
  if not feature then
    return nil, nil, why .. '. Usage: :' .. name .. ' FEATURE [STRENGTH]'
  end
  local strength
  if a.fargs[2] then
    strength, why = tm().number(a.fargs[2], 'strength', tm().max_strength)
    if not strength then return nil, nil, why end
  end
  if a.fargs[3] then
    return nil, nil, 'usage: :' .. name .. ' FEATURE [STRENGTH]'
  end
  return feature, strength
end

vim.api.nvim_create_user_command('TinymorphSteer', function(a)
  local feature, strength, why = feature_and_strength(a, 'TinymorphSteer')
  if not feature then return usage(why) end
  tm().steer(feature, strength)
end, { nargs = '+', desc = 'tinymorph: steer toward a feature (Amplify)' })
vim.api.nvim_create_user_command('TinymorphSuppress', function(a)
  local feature, strength, why = feature_and_strength(a, 'TinymorphSuppress')
  if not feature then return usage(why) end
  tm().steer(feature, strength and math.abs(strength) or nil, 'suppress')
end, { nargs = '+', desc = 'tinymorph: steer away from a feature (as the Suppress action)' })
vim.api.nvim_create_user_command('TinymorphOff', function(a)
  local feature, why = tm().feature(a.fargs[1])
  if not feature then return usage(why .. '. Usage: :TinymorphOff FEATURE') end
  tm().steer(feature, nil, 'ablate')
end, { nargs = 1, desc = 'tinymorph: switch a feature off in suggestions' })
vim.api.nvim_create_user_command('TinymorphClear', function() tm().clear() end, { desc = 'tinymorph: clear steering' })
vim.api.nvim_create_user_command('TinymorphList', function() tm().list() end, { desc = 'tinymorph: list steering' })
vim.api.nvim_create_user_command('TinymorphSearch', function(a)
  tm().search(a.args ~= '' and a.args or nil)
end, { nargs = '?', desc = 'tinymorph: search features' })
vim.api.nvim_create_user_command('TinymorphStatus', function() tm().status() end, { desc = 'tinymorph: status' })
-- From Visual mode: the selection; with a line range: those lines. ({row, col} marks, end exclusive.)
local function selected(a)
  local first, last = vim.api.nvim_buf_get_mark(0, '<'), vim.api.nvim_buf_get_mark(0, '>')
  if a.range == 0 or first[1] ~= a.line1 or last[1] ~= a.line2 or vim.fn.visualmode() == 'V' then
    return { a.line1, 0 }, { a.line2, #vim.fn.getline(a.line2) }
  end
  return first, { last[1], math.min(last[2] + 1, #vim.fn.getline(last[1])) }
end
vim.api.nvim_create_user_command('TinymorphMoreLikeThis', function(a)
  local first, last = selected(a)
  tm().more_like_this(first, last, a.args ~= '' and a.args or nil)
end, { range = true, nargs = '?', desc = 'tinymorph: write more like the selection (a style preset)' })
vim.api.nvim_create_user_command('TinymorphByExample', function(a)
  local first, last = selected(a)
  tm().by_example(first, last)
end, { range = true, desc = 'tinymorph: the features most specific to the selection' })
vim.api.nvim_create_user_command('TinymorphWatch', function(a)
  local feature, why = tm().feature(a.fargs[1])
  if not feature then return usage(why .. '. Usage: :TinymorphWatch FEATURE [THRESHOLD]') end
  local threshold
  if a.fargs[2] then
    threshold, why = tm().number(a.fargs[2], 'threshold', 10000)
    if not threshold then return usage(why) end
    if threshold <= 0 then return usage('threshold: ' .. a.fargs[2] .. ' must be above 0') end
  end
  tm().watch(feature, { threshold = threshold })
end, { nargs = '+', desc = 'tinymorph: flag sentences where a feature is strong' })
vim.api.nvim_create_user_command('TinymorphUnwatch', function(a)
  local feature, why = tm().feature(a.fargs[1])
  if not feature then return usage(why .. '. Usage: :TinymorphUnwatch FEATURE') end
  tm().unwatch(feature)
end, { nargs = 1, desc = 'tinymorph: stop watching a feature' })
vim.api.nvim_create_user_command('TinymorphWatches', function() tm().watches() end,
  { desc = 'tinymorph: watched features (pick one to stop watching it)' })
vim.api.nvim_create_user_command('TinymorphMap', function() tm().map() end,
  { desc = 'tinymorph: feature map of this buffer, in the browser' })
vim.api.nvim_create_user_command('TinymorphPresets', function() tm().presets() end,
  { desc = 'tinymorph: style presets (switch on / off, rename, remove)' })
