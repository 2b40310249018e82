// A thin VS Code client for the tinymorph language server: it starts `tinymorph serve`, passes the settings, and
// adds palette commands for steering. Hints, hover, code actions and completions come from the server itself.
import * as vscode from 'vscode';
import {
  CloseAction, ErrorAction, LanguageClient, LanguageClientOptions, ServerOptions, TransportKind,
} from 'vscode-languageclient/node';
import * as fs from 'node:fs';
import {
  checkPresetName, contributedKeys, describePreset, presetState, describeSteering, describeWatches, documentSelector,
  ExampleFeature, exampleItems, initializationOptions, Launch, launchOptions, parseFeature, parseThreshold, Preset,
  presetChoices, serverDownMessage, SteerEntry, strengthProblem, Watch,
} from './settings';

let client: LanguageClient | undefined;
let keys: string[] = [];

async function start(): Promise<void> {
  const settings = vscode.workspace.getConfiguration('tinymorph');
  const launch = launchOptions(settings);
  if ('error' in launch) {
    void vscode.window.showErrorMessage(launch.error);
    return;
  }
  const serverOptions: ServerOptions = { command: launch.command, args: launch.args, transport: TransportKind.stdio };
  let warned = false;
  const warnOnce = (detail: string) => {
    if (!warned) {
      warned = true;
      void vscode.window.showErrorMessage(serverDownMessage(launch as Launch, detail));
    }
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(settings),
    initializationOptions: initializationOptions(settings, keys),
    synchronize: { configurationSection: 'tinymorph' },
    outputChannelName: 'tinymorph',
    middleware: {
      // The code action "Features most specific to the selection" shows a quick pick here, instead of the server's
      // message requests.
      executeCommand: async (command, args, next) => {
        if (command === 'tinymorph.features.byExample' && args[0] && typeof args[0] === 'object') {
          await byExample({ ...(args[0] as object), show: false });
          return undefined;
        }
        return next(command, args);
      },
    },
    errorHandler: {
      error: () => ({ action: ErrorAction.Shutdown, handled: true }),
      closed: () => {
        warnOnce('stopped');
        return { action: CloseAction.DoNotRestart, handled: true };
      },
    },
  };
  client = new LanguageClient('tinymorph', 'tinymorph', serverOptions, clientOptions);
  try {
    await client.start();
  } catch (err) {
    warnOnce(`could not start: ${err instanceof Error ? err.message : String(err)}`);
    client = undefined;
  }
}

async function stop(): Promise<void> {
  const running = client;
  client = undefined;
  if (running) {
    await running.stop().catch(() => undefined);
  }
}

async function run<T>(command: string, argument: object = {}): Promise<T | undefined> {
  if (!client) {
    void vscode.window.showWarningMessage('tinymorph: the server is not running ("tinymorph: Restart the server").');
    return undefined;
  }
  try {
    return await client.sendRequest<T>('workspace/executeCommand', { command, arguments: [argument] });
  } catch (err) {
    void vscode.window.showErrorMessage(`tinymorph: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  }
}

async function askFeature(prompt: string): Promise<number | undefined> {
  const text = await vscode.window.showInputBox({
    prompt, validateInput: (v) => (typeof parseFeature(v) === 'string' ? (parseFeature(v) as string) : undefined),
  });
  const feature = parseFeature(text);
  return typeof feature === 'number' ? feature : undefined;
}

async function steer(feature: number, strength?: number, mode = 'add'): Promise<void> {
  // without a strength the server uses the feature's calibrated one (the Amplify setting)
  const argument = strength === undefined ? { feature, mode } : { feature, strength, mode };
  const result = await run<{ steering: SteerEntry[] }>('tinymorph.steer.add', argument);
  if (result) {
    void vscode.window.showInformationMessage(`tinymorph steering: ${describeSteering(result.steering)}`);
  }
}

/** Features found by example: pick one, then what to do with it (the server's own commands). */
async function byExample(argument: object): Promise<void> {
  const result = await run<{ features: ExampleFeature[] }>('tinymorph.features.byExample', argument);
  if (!result) { return; }
  if (result.features.length === 0) {
    void vscode.window.showInformationMessage('tinymorph: no feature a word names is specific to this text.');
    return;
  }
  const pick = await vscode.window.showQuickPick(exampleItems(result.features),
    { placeHolder: 'Most specific to the selection', matchOnDetail: true });
  if (!pick) { return; }
  const action = await vscode.window.showQuickPick(pick.feature.actions.map((a) => ({ label: a.title, action: a })),
    { placeHolder: pick.feature.label });
  if (action && await run(action.action.command, action.action.arguments[0] ?? {})) {
    void vscode.window.showInformationMessage(`tinymorph: ${action.label}`);
  }
}

/** The feature map of a document, in a webview beside it (the page is self-contained: its script runs there). */
async function showMap(uri: string, title: string): Promise<void> {
  const result = await run<{ path: string }>('tinymorph.map', { uri, open: false });
  if (!result) { return; }
  const panel = vscode.window.createWebviewPanel('tinymorph.map', `Feature map: ${title}`,
    vscode.ViewColumn.Beside, { enableScripts: true });
  panel.webview.html = fs.readFileSync(result.path, 'utf8');
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  keys = contributedKeys(context.extension.packageJSON);
  const register = (name: string, fn: () => Promise<void>) =>
    context.subscriptions.push(vscode.commands.registerCommand(name, fn));
  register('tinymorph.ui.steer', async () => {
    const feature = await askFeature('Feature to steer toward');
    if (feature === undefined) { return; }
    const text = await vscode.window.showInputBox({
      prompt: 'Strength (1 = the calibrated strength of the feature; -10 to 10)', value: '1',
      validateInput: (value) => strengthProblem(value) });
    if (text !== undefined && strengthProblem(text) === undefined) { await steer(feature, Number(text)); }
  });
  register('tinymorph.ui.suppress', async () => {
    const feature = await askFeature('Feature to switch off');
    if (feature !== undefined) { await steer(feature, 0, 'ablate'); }
  });
  register('tinymorph.ui.clear', async () => {
    if (await run('tinymorph.steer.clear')) { void vscode.window.showInformationMessage('tinymorph: steering cleared'); }
  });
  register('tinymorph.ui.list', async () => {
    const result = await run<{ steering: SteerEntry[] }>('tinymorph.steer.list');
    if (result) { void vscode.window.showInformationMessage(`tinymorph steering: ${describeSteering(result.steering)}`); }
  });
  register('tinymorph.ui.search', async () => {
    const query = await vscode.window.showInputBox({ prompt: 'Search features (labels and contexts)' });
    if (!query) { return; }
    const result = await run<{ features: { feature: number; label: string }[] }>('tinymorph.features.search', { query });
    if (!result) { return; }
    const pick = await vscode.window.showQuickPick(
      result.features.map((f) => ({ label: `${f.feature}`, description: f.label, feature: f.feature })),
      { placeHolder: 'Steer toward…' });
    if (pick) { await steer(pick.feature); }
  });
  register('tinymorph.ui.moreLikeThis', async () => {
    const editor = vscode.window.activeTextEditor;
    if (!client || !editor || editor.selection.isEmpty) {
      void vscode.window.showWarningMessage('tinymorph: select a passage you like first.');
      return;
    }
    const name = await vscode.window.showInputBox({
      prompt: 'Name of the preset (empty: its first words)', validateInput: (v) => (v.trim() ? checkPresetName(v) : undefined),
    });
    if (name === undefined) { return; }
    const result = await run<{ preset: Preset; against: string }>('tinymorph.preset.create', {
      uri: client.code2ProtocolConverter.asUri(editor.document.uri), version: editor.document.version,
      range: client.code2ProtocolConverter.asRange(editor.selection), ...(name.trim() ? { name: name.trim() } : {}),
    });
    if (result) {
      void vscode.window.showInformationMessage(`tinymorph: suggestions now lean toward "${result.preset.name}" ` +
        `(against the ${result.against === 'neutral' ? 'neutral reference' : 'rest of the document'}).`);
    }
  });
  register('tinymorph.ui.presets', async () => {
    const listed = await run<{ presets: Preset[] }>('tinymorph.preset.list');
    if (!listed) { return; }
    if (listed.presets.length === 0) {
      void vscode.window.showInformationMessage('tinymorph: no presets yet: select a passage and run "Write more like the selection".');
      return;
    }
    const preset = await vscode.window.showQuickPick(
      listed.presets.map((p) => ({ label: p.name, description: presetState(p), preset: p })), { placeHolder: 'Preset' });
    if (!preset) { return; }
    const choice = await vscode.window.showQuickPick(presetChoices(preset.preset), { placeHolder: preset.label });
    if (!choice) { return; }
    const argument = { ...choice.argument };
    if (choice.command === 'tinymorph.preset.rename') {
      const to = await vscode.window.showInputBox({ prompt: 'New name', value: preset.label, validateInput: checkPresetName });
      if (to === undefined) { return; }
      argument.to = to.trim();
    }
    const result = await run<{ presets: Preset[] }>(choice.command, argument);
    if (result) {
      void vscode.window.showInformationMessage(`tinymorph presets: ${result.presets.map(describePreset).join('; ') || 'none'}`);
    }
  });
  register('tinymorph.ui.watch', async () => {
    const feature = await askFeature('Feature to watch (flagged wherever it is strong)');
    if (feature === undefined) { return; }
    const text = await vscode.window.showInputBox({
      prompt: 'Threshold: the activation it must reach (empty: half its strongest in the corpus)',
      validateInput: (v) => { const t = parseThreshold(v); return t && typeof t === 'object' ? t.error : undefined; },
    });
    if (text === undefined) { return; }
    const threshold = parseThreshold(text);
    const uri = client && vscode.window.activeTextEditor
      ? client.code2ProtocolConverter.asUri(vscode.window.activeTextEditor.document.uri) : undefined;
    const result = await run<{ watch: Watch[] }>('tinymorph.watch.add',
      { feature, ...(typeof threshold === 'number' ? { threshold } : {}), ...(uri ? { uri } : {}) });
    if (result) { void vscode.window.showInformationMessage(`tinymorph watching: ${describeWatches(result.watch)}`); }
  });
  register('tinymorph.ui.watches', async () => {
    const listed = await run<{ watch: Watch[] }>('tinymorph.watch.list');
    if (!listed) { return; }
    if (listed.watch.length === 0) {
      void vscode.window.showInformationMessage('tinymorph: nothing watched ("tinymorph: Watch a feature").');
      return;
    }
    const pick = await vscode.window.showQuickPick(listed.watch.map((w) => ({
      label: `${w.feature}`, description: `${w.label} · above ${w.threshold} · ${w.severity}`, watch: w })),
    { placeHolder: 'Stop watching…' });
    if (!pick) { return; }
    const result = await run<{ watch: Watch[] }>('tinymorph.watch.remove', { feature: pick.watch.feature });
    if (result) { void vscode.window.showInformationMessage(`tinymorph watching: ${describeWatches(result.watch)}`); }
  });
  register('tinymorph.ui.byExample', async () => {
    const editor = vscode.window.activeTextEditor;
    if (!client || !editor || editor.selection.isEmpty) {
      void vscode.window.showWarningMessage('tinymorph: select some text first.');
      return;
    }
    await byExample({ uri: client.code2ProtocolConverter.asUri(editor.document.uri), version: editor.document.version,
      range: client.code2ProtocolConverter.asRange(editor.selection) });
  });
  register('tinymorph.ui.map', async () => {
    const editor = vscode.window.activeTextEditor;
    if (!client || !editor) {
      void vscode.window.showWarningMessage('tinymorph: open a document first.');
      return;
    }
    const name = editor.document.uri.path.split('/').pop() ?? 'document';
    await showMap(client.code2ProtocolConverter.asUri(editor.document.uri), name);
  });
  register('tinymorph.ui.status', async () => {
    const s = await run<{ state: string; engine?: { model: string; sae: string; device: string }; queueDepth: number }>(
      'tinymorph.status');
    if (s) {
      void vscode.window.showInformationMessage(
        `tinymorph: ${s.state} · ${s.engine?.model ?? '-'} · SAE ${s.engine?.sae ?? '-'} · ${s.engine?.device ?? '-'}`);
    }
  });
  register('tinymorph.ui.restart', async () => { await stop(); await start(); });
  context.subscriptions.push(vscode.workspace.onDidChangeConfiguration(async (e) => {
    if (e.affectsConfiguration('tinymorph.server')) { await stop(); await start(); }
  }));
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
