-- tinymorph for Neovim: enable the server, inlay hints, inline completion (0.12) and keys for steering.
--
--   require('tinymorph').setup({
--     cmd = { vim.fn.expand('~/tinymorph/.venv/bin/tinymorph'), 'serve' },  -- where `make demo` installed it
--     init_options = { model = 'default' },                                 -- any key of the README's table
--     keys = true,                                                          -- false: no key mappings
--     virtual_text = true,          -- false: watched features only in the sign column and :lua vim.diagnostic
--     pause_ms = 400,               -- ghost text after a pause in typing this long
--   })
local M = {}

M.name = 'tinymorph'

local function notify(msg, level)
  vim.notify('tinymorph: ' .. msg, level or vim.log.levels.INFO)
end

local function client_for(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = M.name })[1]
end

-- Run a tinymorph.* command with one object argument; `on_result(result)` gets the server's answer.
function M.command(name, arg, on_result, bufnr)
  local client = client_for(bufnr)
  if not client then
    notify('the server is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  client:request('workspace/executeCommand', { command = name, arguments = { arg or vim.empty_dict() } },
    function(err, result)
      if err then
        -- the server's message names the command already where it matters: say it once
        local message = err.message or tostring(err)
        notify(message:find(name, 1, true) and message or (name .. ': ' .. message), vim.log.levels.ERROR)
      elseif on_result then
        on_result(result)
      end
    end, bufnr or 0)
end

local function describe(steering)
  if #steering == 0 then
    return 'no steering'
  end
  local parts = {}
  for _, e in ipairs(steering) do
    local what = e.mode == 'ablate' and 'off' or (e.mode == 'clamp' and ('= ' .. e.value) or
      string.format('%+g', e.strength))
    table.insert(parts, string.format('%d %s (%s)', e.feature, what, e.label ~= '' and e.label or '?'))
  end
  return table.concat(parts, ', ')
end

-- The largest |strength| the server accepts.
M.max_strength = 10

-- A number from a command's argument, or nil and why not (`what`: its name in the message).
function M.number(text, what, limit)
  local n = tonumber(text)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then
    return nil, string.format('%s: %s is not a number', what, text)
  end
  if limit and math.abs(n) > limit then
    return nil, string.format('%s: %s is too large (at most %g either way)', what, text, limit)
  end
  return n
end

-- A feature number from a command's argument, or nil and why not.
function M.feature(text)
  local n = tonumber(text)
  if n == nil or n < 0 or n ~= math.floor(n) then
    return nil, string.format('feature: %s is not a feature number (a whole number, 0 or more)', text)
  end
  return n
end

-- Steer: `mode` 'add' (Amplify; strength default: the server's amplifyStrength), 'suppress' (the same as the
-- Suppress action: minus that strength), 'ablate' (switch the feature off) or 'clamp'. The server confirms it.
function M.steer(feature, strength, mode, on_done)
  M.command('tinymorph.steer.add', { feature = feature, strength = strength, mode = mode or 'add' }, function(r)
    if r.refused == nil and r.said == nil then
      notify('steering: ' .. describe(r.steering))
    end
    if on_done then on_done(r) end
  end)
end

function M.clear()
  M.command('tinymorph.steer.clear', nil, function()
    notify('steering cleared')
  end)
end

function M.list()
  M.command('tinymorph.steer.list', nil, function(r)
    notify('steering: ' .. describe(r.steering))
  end)
end

-- Apply the first code action at the cursor of `kind` (the server's steering actions: refactor.tinymorph.*).
local function first_action(kind)
  local applied = false
  vim.lsp.buf.code_action({
    apply = true,
    filter = function(action)
      if applied or action.kind ~= kind then
        return false
      end
      applied = true
      return true
    end,
  })
end

-- Steer toward what the hint at the cursor shows first: the first "Amplify" code action there.
function M.steer_here()
  first_action('refactor.tinymorph.amplify')
end

function M.search(query)
  local function run(q)
    if not q or q == '' then
      return
    end
    M.command('tinymorph.features.search', { query = q }, function(r)
      if #r.features == 0 then
        notify('no feature matches ' .. q)
        return
      end
      vim.ui.select(r.features, {
        prompt = 'Steer toward feature',
        format_item = function(f)
          return string.format('%d  %s', f.feature, f.label)
        end,
      }, function(choice)
        if choice then
          M.steer(choice.feature)
        end
      end)
    end)
  end
  if query then
    run(query)
  else
    vim.ui.input({ prompt = 'Search features: ' }, run)
  end
end

-- Style presets ("write more like this"): a steering vector made from a passage you like.
local function preset_line(p)
  return string.format('%s %s (%+g)%s', p.enabled and '[on] ' or '[off]', p.name, p.strength,
    p.error and ('  ! ' .. p.error) or '')
end

function M.describe_presets(presets)
  if #presets == 0 then
    return 'no presets'
  end
  local parts = {}
  for _, p in ipairs(presets) do
    table.insert(parts, preset_line(p))
  end
  return table.concat(parts, '; ')
end

-- An LSP range from {row, col} marks (1-based row, 0-based byte column, end exclusive) of the current buffer.
local function lsp_range(client, first, last)
  local function position(at)
    local line = vim.api.nvim_buf_get_lines(0, at[1] - 1, at[1], false)[1] or ''
    return { line = at[1] - 1, character = vim.str_utfindex(line, client.offset_encoding, math.min(at[2], #line)) }
  end
  return { start = position(first), ['end'] = position(last) }
end

-- Make a preset from the text between `first` and `last` ({row, col}: 1-based row, 0-based byte column, end
-- exclusive) of the current buffer; `name` is optional (the passage's first words otherwise).
function M.more_like_this(first, last, name, on_done)
  local client = client_for(0)
  if not client then
    notify('the server is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  local bufnr = vim.api.nvim_get_current_buf()
  local arg = { uri = vim.uri_from_bufnr(bufnr), version = vim.lsp.util.buf_versions[bufnr],
    range = lsp_range(client, first, last), name = name }
  M.command('tinymorph.preset.create', arg, function(r)
    notify(string.format('suggestions now lean toward "%s" (against the %s; +%g). :TinymorphPresets to change.',
      r.preset.name, r.against == 'neutral' and 'neutral reference' or 'rest of the document', r.preset.strength))
    if on_done then
      on_done(r)
    end
  end)
end

local function preset_command(name, arg, on_done)
  M.command(name, arg, function(r)
    notify('presets: ' .. M.describe_presets(r.presets))
    if on_done then on_done(r) end
  end)
end

function M.preset_toggle(name, enabled, on_done)
  preset_command('tinymorph.preset.toggle', { name = name, enabled = enabled }, on_done)
end

function M.preset_rename(name, to, on_done)
  preset_command('tinymorph.preset.rename', { name = name, to = to }, on_done)
end

function M.preset_remove(name, on_done)
  preset_command('tinymorph.preset.remove', { name = name }, on_done)
end

-- Pick a preset, then switch it on or off, rename or remove it.
function M.presets()
  M.command('tinymorph.preset.list', nil, function(r)
    if #r.presets == 0 then
      notify('no presets yet: select a passage you like and run :TinymorphMoreLikeThis')
      return
    end
    vim.ui.select(r.presets, { prompt = 'tinymorph preset', format_item = preset_line }, function(p)
      if not p then
        return
      end
      local choices = { p.enabled and 'switch off' or 'switch on', 'rename', 'remove' }
      vim.ui.select(choices, { prompt = p.name }, function(what)
        if what == 'rename' then
          vim.ui.input({ prompt = 'New name: ', default = p.name }, function(to)
            if to and to ~= '' then M.preset_rename(p.name, to) end
          end)
        elseif what == 'remove' then
          M.preset_remove(p.name)
        elseif what then
          M.preset_toggle(p.name, not p.enabled)
        end
      end)
    end)
  end)
end

-- Watched features: a diagnostic (vim.diagnostic) on every sentence where a feature you watch is strong.
local function describe_watches(watches)
  if #watches == 0 then
    return 'nothing watched'
  end
  local parts = {}
  for _, w in ipairs(watches) do
    table.insert(parts, string.format('%d (%s) above %g', w.feature, w.label ~= '' and w.label or '?', w.threshold))
  end
  return table.concat(parts, ', ')
end
M.describe_watches = describe_watches

-- Watch `feature`; `opts` may hold threshold (its activation; default: half its strongest in the corpus),
-- severity ('error' | 'warning' | 'information' | 'hint') and message.
function M.watch(feature, opts, on_done)
  opts = opts or {}
  M.command('tinymorph.watch.add', { feature = feature, threshold = opts.threshold, severity = opts.severity,
    message = opts.message, uri = vim.uri_from_bufnr(0) }, function(r)
    if r.said == nil then notify('watching: ' .. describe_watches(r.watch)) end  -- the server said it
    if on_done then on_done(r) end
  end)
end

function M.unwatch(feature, on_done)
  M.command('tinymorph.watch.remove', { feature = feature, uri = vim.uri_from_bufnr(0) }, function(r)
    if r.said == nil then notify('watching: ' .. describe_watches(r.watch)) end
    if on_done then on_done(r) end
  end)
end

-- List the watched features; pick one to stop watching it.
function M.watches()
  M.command('tinymorph.watch.list', { uri = vim.uri_from_bufnr(0) }, function(r)
    if #r.watch == 0 then
      notify('nothing watched: <leader>tw on a word watches its strongest feature')
      return
    end
    vim.ui.select(r.watch, {
      prompt = 'Stop watching',
      format_item = function(w)
        return string.format('%d  %s  (above %g, %s)', w.feature, w.label, w.threshold, w.severity)
      end,
    }, function(w)
      if w then M.unwatch(w.feature) end
    end)
  end)
end

-- Watch what the hint at the cursor shows first: the first "Watch" code action there.
function M.watch_here()
  first_action('refactor.tinymorph.watch')
end

-- Pick one of the features `result.features` (from tinymorph.features.byExample), then what to do with it.
local function pick_example(result, on_done)
  if #result.features == 0 then
    notify('no feature a word names is specific to this text')
    return
  end
  vim.ui.select(result.features, {
    prompt = 'Most specific to the selection',
    format_item = function(f)
      return f.label .. (f.examples[1] and ('   e.g. ' .. f.examples[1]) or '')
    end,
  }, function(f)
    if not f then return end
    vim.ui.select(f.actions, { prompt = f.label, format_item = function(a) return a.title end }, function(a)
      if a then
        M.command(a.command, a.arguments[1], function(r)
          notify(a.title .. ': done')
          if on_done then on_done(a, r) end
        end)
      end
    end)
  end)
end

-- The features most specific to the text between `first` and `last` ({row, col}, as for more_like_this).
function M.by_example(first, last, on_done)
  local client = client_for(0)
  if not client then
    notify('the server is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  local bufnr = vim.api.nvim_get_current_buf()
  M.command('tinymorph.features.byExample', { uri = vim.uri_from_bufnr(bufnr),
    version = vim.lsp.util.buf_versions[bufnr], range = lsp_range(client, first, last) }, function(r)
    pick_example(r, on_done)
  end)
end

-- The feature map of this buffer: a page that colours the text by any feature you click, opened in the browser
-- (the server asks Neovim to open it: vim.ui.open; when that failed, the system opener is tried here once more).
function M.map(on_done)
  M.command('tinymorph.map', { uri = vim.uri_from_bufnr(0) }, function(r)
    if r.opened then
      notify('feature map opened: ' .. r.path)
    else
      local ok, cmd = pcall(vim.ui.open, r.uri)
      local opened = ok and cmd ~= nil
      if opened and cmd.wait then
        local done = cmd:wait(3000)
        opened = done ~= nil and done.code == 0
      end
      notify(opened and ('feature map opened: ' .. r.path) or
        ('no browser could be opened; the feature map is at ' .. r.path), opened and vim.log.levels.INFO or
        vim.log.levels.WARN)
    end
    if on_done then on_done(r) end
  end)
end

function M.status()
  M.command('tinymorph.status', nil, function(r)
    local e = r.engine or {}
    notify(string.format('%s · model %s · SAE %s · %s · queue %d', r.state, e.model or '-', e.sae or '-',
      e.device or '-', r.queueDepth or 0))
  end)
end

-- Ghost text at the cursor, now (as Neovim asks after a pause; also on entering Insert mode at the end of a line and
-- after any pause in typing, not only after a whole word).
local function ask_ghost_text(bufnr)
  if vim.api.nvim_get_current_buf() ~= bufnr or not vim.api.nvim_get_mode().mode:match('^i') then
    return
  end
  local client = client_for(bufnr)
  if not client then return end
  local ok, inline = pcall(require, 'vim.lsp.inline_completion')
  if ok and inline.is_enabled({ bufnr = bufnr }) then
    -- the same request Neovim's own automatic trigger sends: its handler shows the answer as ghost text
    vim.api.nvim_exec_autocmds('CursorMovedI', { buffer = bufnr, modeline = false })
  end
end

local function on_attach(client, bufnr, opts)
  if vim.lsp.inlay_hint then
    vim.lsp.inlay_hint.enable(true, { bufnr = bufnr })
  end
  if vim.lsp.inline_completion and client:supports_method('textDocument/inlineCompletion') then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    local group = vim.api.nvim_create_augroup('tinymorph.ghost.' .. bufnr, { clear = true })
    local pause = opts.pause_ms or 400
    local timer = vim.uv.new_timer()
    local ghost_ns = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')
    -- typing: the ghost text of the text before the keystroke is wrong now (it would stay glued to the new
    -- letters); hide it at once, and ask again once the writer pauses
    vim.api.nvim_create_autocmd('TextChangedI', {
      group = group, buffer = bufnr,
      callback = function()
        vim.api.nvim_buf_clear_namespace(bufnr, ghost_ns, 0, -1)
        timer:stop()
        timer:start(pause, 0, vim.schedule_wrap(function() ask_ghost_text(bufnr) end))
      end,
    })
    vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufDelete' }, {
      group = group, buffer = bufnr, callback = function() timer:stop() end,
    })
  end
  -- watched features as virtual text by default (Neovim 0.12 has it off), in tinymorph's namespaces only
  if opts.virtual_text ~= false then
    for _, pull in ipairs({ false, true }) do
      vim.diagnostic.config({ virtual_text = { source = false, spacing = 2 } },
        vim.lsp.diagnostic.get_namespace(client.id, pull))
    end
  end
  if opts.keys == false then
    return
  end
  local function map(lhs, rhs, desc)
    vim.keymap.set('n', lhs, rhs, { buffer = bufnr, desc = 'tinymorph: ' .. desc })
  end
  map('<leader>ta', vim.lsp.buf.code_action, 'code actions (accept, amplify, suppress, rewrite)')
  map('<leader>ts', M.steer_here, 'steer toward the feature under the cursor')
  map('<leader>tc', M.clear, 'clear steering')
  map('<leader>tl', M.list, 'list steering')
  map('<leader>tf', function() M.search() end, 'search features')
  map('<leader>ti', M.status, 'status')
  map('<leader>tp', M.presets, 'style presets (switch on / off, rename, remove)')
  map('<leader>tw', M.watch_here, 'watch the feature under the cursor (diagnostics where it is strong)')
  map('<leader>tW', M.watches, 'watched features (stop watching)')
  map('<leader>tg', function() M.map() end, 'feature map of this buffer (in the browser)')
  vim.keymap.set('x', '<leader>te', ':TinymorphByExample<CR>',
    { buffer = bufnr, silent = true, desc = 'tinymorph: features most specific to the selection' })
  vim.keymap.set('x', '<leader>tm', ':TinymorphMoreLikeThis<CR>',
    { buffer = bufnr, silent = true, desc = 'tinymorph: write more like the selection' })
  vim.keymap.set('x', '<leader>tr', vim.lsp.buf.code_action, { buffer = bufnr, desc = 'tinymorph: rewrite selection' })
  if vim.lsp.inline_completion then
    -- accept the ghost text; with none shown, ask for it (never a literal ^L in the prose)
    vim.keymap.set('i', '<C-l>', function()
      if not vim.lsp.inline_completion.get() then
        ask_ghost_text(bufnr)
      end
    end, { buffer = bufnr, desc = 'tinymorph: accept ghost text' })
  end
end

function M.setup(opts)
  opts = opts or {}
  local base = dofile(vim.api.nvim_get_runtime_file('lsp/tinymorph.lua', false)[1])
  local config = vim.tbl_deep_extend('force', base, {
    cmd = opts.cmd,
    init_options = opts.init_options,
    settings = opts.settings and { tinymorph = opts.settings } or nil,
    filetypes = opts.filetypes,
  })
  local exe = config.cmd[1]
  if vim.fn.executable(exe) ~= 1 then
    -- One clear message instead of a failed spawn on every buffer.
    notify(string.format('cannot start the server: %q is not an executable. Run `make demo` in the tinymorph ' ..
      'checkout and pass cmd = { "<checkout>/.venv/bin/tinymorph", "serve" } to setup().', exe), vim.log.levels.ERROR)
    return false
  end
  -- The code action "Features most specific to the selection" shows a picker here instead of the server's
  -- message request.
  vim.lsp.commands['tinymorph.features.byExample'] = function(command, ctx)
    local arg = vim.tbl_extend('force', command.arguments[1], { show = false })
    M.command('tinymorph.features.byExample', arg, function(r) pick_example(r) end, ctx.bufnr)
  end
  vim.lsp.config(M.name, config)
  vim.lsp.enable(M.name)
  local group = vim.api.nvim_create_augroup('tinymorph', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == M.name then
        on_attach(client, ev.buf, opts)
      end
    end,
  })
  return true
end

return M
