-- :Tinymorph* commands. Nothing starts until require('tinymorph').setup() is called (see lua/tinymorph/init.lua).
local function tm()
  return require('tinymorph')
end

vim.api.nvim_create_user_command('TinymorphSteer', function(a)
  local feature, strength = tonumber(a.fargs[1]), tonumber(a.fargs[2])
  if not feature then
    vim.notify('tinymorph: usage :TinymorphSteer FEATURE [STRENGTH]', vim.log.levels.ERROR)
    return
  end
  tm().steer(feature, strength)
end, { nargs = '+', desc = 'tinymorph: steer toward a feature' })
vim.api.nvim_create_user_command('TinymorphSuppress', function(a)
  tm().steer(tonumber(a.fargs[1]), 0, 'ablate')
end, { nargs = 1, desc = 'tinymorph: switch a feature off' })
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
  local feature, threshold = tonumber(a.fargs[1]), a.fargs[2] and tonumber(a.fargs[2])
  if not feature or (a.fargs[2] and not threshold) then
    vim.notify('tinymorph: usage :TinymorphWatch FEATURE [THRESHOLD]', vim.log.levels.ERROR)
    return
  end
  tm().watch(feature, { threshold = threshold })
end, { nargs = '+', desc = 'tinymorph: flag sentences where a feature is strong' })
vim.api.nvim_create_user_command('TinymorphUnwatch', function(a)
  local feature = tonumber(a.fargs[1])
  if not feature then
    vim.notify('tinymorph: usage :TinymorphUnwatch FEATURE', vim.log.levels.ERROR)
    return
  end
  tm().unwatch(feature)
end, { nargs = 1, desc = 'tinymorph: stop watching a feature' })
vim.api.nvim_create_user_command('TinymorphWatches', function() tm().watches() end,
  { desc = 'tinymorph: watched features (pick one to stop watching it)' })
vim.api.nvim_create_user_command('TinymorphMap', function() tm().map() end,
  { desc = 'tinymorph: feature map of this buffer, in the browser' })
vim.api.nvim_create_user_command('TinymorphPresets', function() tm().presets() end,
  { desc = 'tinymorph: style presets (switch on / off, rename, remove)' })
