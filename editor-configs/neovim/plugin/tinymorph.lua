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
vim.api.nvim_create_user_command('TinymorphMoreLikeThis', function(a)
  -- from Visual mode: the selection; with a line range: those lines
  local first, last = vim.api.nvim_buf_get_mark(0, '<'), vim.api.nvim_buf_get_mark(0, '>')
  if a.range == 0 or first[1] ~= a.line1 or last[1] ~= a.line2 or vim.fn.visualmode() == 'V' then
    first, last = { a.line1, 0 }, { a.line2, #vim.fn.getline(a.line2) }
  else
    last = { last[1], math.min(last[2] + 1, #vim.fn.getline(last[1])) }
  end
  tm().more_like_this(first, last, a.args ~= '' and a.args or nil)
end, { range = true, nargs = '?', desc = 'tinymorph: write more like the selection (a style preset)' })
vim.api.nvim_create_user_command('TinymorphPresets', function() tm().presets() end,
  { desc = 'tinymorph: style presets (switch on / off, rename, remove)' })
