-- Drives headless Neovim with editor-configs/neovim against the real server; writes what it saw as JSON.
local args = vim.json.decode(os.getenv('TINYMORPH_NVIM_TEST'))
local out = {}

local function wait(ms, cond)
  return vim.wait(ms, function()
    vim.cmd('redraw')
    return cond()
  end, 50)
end

local function run()
  vim.opt.rtp:prepend(args.config)
  vim.cmd('filetype on')
  vim.cmd('runtime plugin/tinymorph.lua')
  local tm = require('tinymorph')
  out.setup = tm.setup({
    cmd = { args.python, '-m', 'lsp_server' },
    init_options = { model = args.model, sae = args.sae, device = 'cpu', debounceMs = 50, maxTokens = 6 },
  })
  vim.cmd.edit(args.doc)
  out.filetype = vim.bo.filetype
  out.attached = wait(60000, function() return #vim.lsp.get_clients({ bufnr = 0, name = 'tinymorph' }) > 0 end)
  local client = vim.lsp.get_clients({ bufnr = 0, name = 'tinymorph' })[1]
  out.encoding = client.offset_encoding
  out.ready = wait(60000, function()
    local r = client:request_sync('workspace/executeCommand',
      { command = 'tinymorph.status', arguments = { vim.empty_dict() } }, 5000, 0)
    return r and r.result and r.result.state == 'ready'
  end)
  out.inlay_enabled = vim.lsp.inlay_hint.is_enabled({ bufnr = 0 })
  out.hints_arrived = wait(60000, function() return #vim.lsp.inlay_hint.get({ bufnr = 0 }) > 0 end)
  out.hints = {}
  for _, h in ipairs(vim.lsp.inlay_hint.get({ bufnr = 0 })) do
    local label = h.inlay_hint.label
    if type(label) == 'table' then
      local parts = {}
      for _, p in ipairs(label) do table.insert(parts, p.value) end
      label = table.concat(parts)
    end
    table.insert(out.hints, { line = h.inlay_hint.position.line, label = label })
  end

  -- hover on the second word
  vim.api.nvim_win_set_cursor(0, { 1, 5 })
  local hover = vim.lsp.buf_request_sync(0, 'textDocument/hover',
    vim.lsp.util.make_position_params(0, client.offset_encoding), 10000)
  out.hover = hover and hover[client.id] and hover[client.id].result and hover[client.id].result.contents.value or vim.NIL

  -- inline completion at the end of the first line
  out.inline_enabled = vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.is_enabled({ bufnr = 0 })
  local line1 = vim.api.nvim_buf_get_lines(0, 0, 1, false)[1]
  vim.api.nvim_win_set_cursor(0, { 1, #line1 })
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 1 }
  local inline = client:request_sync('textDocument/inlineCompletion', params, 30000, 0)
  out.inline_items = inline and inline.result and #inline.result.items or 0

  -- a code action applies its edit: rewrite the second paragraph's first words (resolved lazily)
  local before = vim.api.nvim_buf_get_lines(0, 2, 3, false)[1]
  vim.api.nvim_win_set_cursor(0, { 3, 0 })
  vim.lsp.buf.code_action({
    apply = true,
    range = { start = { 3, 0 }, ['end'] = { 3, 7 } },
    filter = function(a) return a.title:match('^Rewrite selection') ~= nil end,
  })
  out.rewrite_applied = wait(30000, function()
    return vim.api.nvim_buf_get_lines(0, 2, 3, false)[1] ~= before
  end)
  out.rewritten = vim.api.nvim_buf_get_lines(0, 2, 3, false)[1]

  -- steering from Lua (the :TinymorphSteer path) and the server's copy of the buffer
  local steered = client:request_sync('workspace/executeCommand',
    { command = 'tinymorph.steer.add', arguments = { { feature = 1, strength = 2 } } }, 10000, 0)
  out.steered = steered and steered.result and #steered.result.steering or 0
  -- write more like the second paragraph: a preset, then switched off, renamed and removed from Lua
  local function presets()
    local r = client:request_sync('workspace/executeCommand',
      { command = 'tinymorph.preset.list', arguments = { vim.empty_dict() } }, 10000, 0)
    return r and r.result and r.result.presets or {}
  end
  local messages = {}
  local notify = vim.notify
  vim.notify = function(msg) table.insert(messages, msg) end
  vim.cmd('3TinymorphMoreLikeThis gulls')
  out.preset_made = wait(30000, function() return #presets() == 1 end) and presets()[1].name == 'gulls'
    and presets()[1].enabled
  local done = false
  tm.preset_toggle('gulls', false, function() done = true end)
  out.preset_off = wait(10000, function() return done end) and presets()[1].enabled == false
  done = false
  tm.preset_rename('gulls', 'letters', function() done = true end)
  out.preset_renamed = wait(10000, function() return done end) and presets()[1].name == 'letters'
  done = false
  tm.preset_remove('letters', function() done = true end)
  out.preset_removed = wait(10000, function() return done end) and #presets() == 0
  vim.cmd('1TinymorphMoreLikeThis')  -- the default name: the passage's first words
  out.preset_default_name = wait(30000, function() return #presets() == 1 end) and presets()[1].name
  vim.notify = notify
  out.preset_messages = messages

  -- features by example (the picker stands in for the writer: the first feature, then "Watch")
  local select = vim.ui.select
  local picked = {}
  local want = 'Watch'
  vim.ui.select = function(items, opts, on_choice)
    table.insert(picked, opts.prompt)
    if opts.prompt == 'Most specific to the selection' then
      on_choice(items[1])
    else
      for _, item in ipairs(items) do
        if item.title and item.title:match('^' .. want) then return on_choice(item) end
      end
      on_choice(items[1])
    end
  end
  local line1 = vim.api.nvim_buf_get_lines(0, 0, 1, false)[1]
  local example
  tm.by_example({ 1, 0 }, { 1, #line1 }, function(action, r) example = { action = action.title, watch = r.watch } end)
  out.example_watched = wait(30000, function() return example ~= nil end) and #example.watch == 1
  out.example_action = example and example.action or vim.NIL
  local feature = example.watch[1].feature
  -- the code action runs the same picker (a client-side command), here steering toward the first feature
  want = 'Steer toward'
  example = nil
  vim.lsp.buf.code_action({ apply = true, range = { start = { 1, 0 }, ['end'] = { 1, #line1 } },
    filter = function(a) return a.title:match('^Features most specific') ~= nil end })
  out.example_from_action = wait(30000, function() return example ~= nil end) or #picked >= 4
  out.example_prompts = picked

  -- watching it with a low threshold: diagnostics in vim.diagnostic, shown as virtual text
  -- virtual text: on by default for tinymorph's namespaces (setup does it)
  local watched
  tm.watch(feature, { threshold = 0.001, severity = 'warning', message = 'watch this' }, function(r) watched = r end)
  out.diagnostics_arrived = wait(30000, function()
    local got = vim.diagnostic.get(0)
    return watched ~= nil and #got > 0 and got[1].message:match('^watch this') ~= nil
  end)
  out.diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(0)) do
    table.insert(out.diagnostics, { lnum = d.lnum, col = d.col, end_col = d.end_col, severity = d.severity,
      message = d.message, source = d.source })
  end
  out.virtual_text = {}
  for _, ns in pairs(vim.diagnostic.get_namespaces()) do
    local vt = ns.user_data and ns.user_data.virt_text_ns
    if vt then
      for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(0, vt, 0, -1, { details = true })) do
        local chunks = {}
        for _, c in ipairs(mark[4].virt_text or {}) do table.insert(chunks, c[1]) end
        table.insert(out.virtual_text, { line = mark[2], text = table.concat(chunks) })
      end
    end
  end
  out.watch_listed = watched and #watched.watch == 1 and watched.watch[1].threshold == 0.001
  -- :TinymorphWatches picks it (the first), which stops watching it: the diagnostics go
  vim.cmd('TinymorphWatches')
  out.diagnostics_cleared = wait(30000, function() return #vim.diagnostic.get(0) == 0 end)
  vim.ui.select = select

  -- the feature map: written into the workspace, opened through vim.ui.open (window/showDocument)
  local open = vim.ui.open
  vim.ui.open = function(uri) out.map_opened = uri; return nil, nil end
  local mapped
  tm.map(function(r) mapped = r end)
  wait(30000, function() return mapped ~= nil and out.map_opened ~= nil end)
  vim.ui.open = open
  out.map_path = mapped and mapped.path or vim.NIL
  out.map_exists = mapped ~= nil and vim.uv.fs_stat(mapped.path) ~= nil

  local doc = client:request_sync('workspace/executeCommand',
    { command = 'tinymorph.document', arguments = { { uri = vim.uri_from_bufnr(0) } } }, 10000, 0)
  out.server_text_matches = doc.result.text == table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n') .. '\n'
end

local ok, err = pcall(run)
out.ok = ok
out.error = ok and vim.NIL or tostring(err)
local fh = assert(io.open(args.result, 'w'))
fh:write(vim.json.encode(out))
fh:close()
vim.cmd('qa!')
