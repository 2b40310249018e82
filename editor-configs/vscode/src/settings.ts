// Pure logic of the extension (no `vscode` import), so `node --test` can cover it: how settings become the
// server's launch command and initializationOptions, which documents it serves, and how results read.

/** The part of vscode.WorkspaceConfiguration this module needs. */
export interface Settings {
  get<T>(key: string): T | undefined;
}

export interface Launch {
  command: string;
  args: string[];
}

/** Keys under `tinymorph.server.*` configure the client, not the server. */
export const CLIENT_KEYS = ['server.command', 'server.pythonPath'];

/** How to start the server: `server.command`, else `server.pythonPath -m lsp_server`, else `tinymorph serve`. */
export function launchOptions(settings: Settings): Launch | { error: string } {
  const command = settings.get<unknown>('server.command');
  if (typeof command === 'string' && command.trim() !== '') {
    return { command: command.trim(), args: [] };
  }
  if (Array.isArray(command) && command.length > 0) {
    if (!command.every((part) => typeof part === 'string' && part !== '')) {
      return { error: 'tinymorph.server.command must be a list of non-empty strings, e.g. ["tinymorph", "serve"]' };
    }
    return { command: command[0], args: command.slice(1) };
  }
  const python = settings.get<unknown>('server.pythonPath');
  if (typeof python === 'string' && python.trim() !== '') {
    return { command: python.trim(), args: ['-m', 'lsp_server'] };
  }
  return { command: 'tinymorph', args: ['serve'] };
}

/** The server's settings (camelCase, as the README's table names them) from the `tinymorph` section. */
export function initializationOptions(settings: Settings, keys: string[]): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  for (const key of keys) {
    if (CLIENT_KEYS.includes(key)) {
      continue;
    }
    const value = settings.get<unknown>(key);
    if (value !== undefined && value !== null) {
      options[key] = value;
    }
  }
  return options;
}

/** The setting names the extension contributes (without the `tinymorph.` prefix), from its package.json. */
export function contributedKeys(packageJson: { contributes: { configuration: { properties: object } } }): string[] {
  return Object.keys(packageJson.contributes.configuration.properties).map((k) => k.replace(/^tinymorph\./, ''));
}

/** Document selector for the language ids in `filetypes` (markdown and plaintext by default), files and untitled. */
export function documentSelector(settings: Settings): { scheme: string; language: string }[] {
  const filetypes = settings.get<unknown>('filetypes');
  const ids = Array.isArray(filetypes) && filetypes.every((f) => typeof f === 'string') && filetypes.length > 0
    ? (filetypes as string[]) : ['markdown', 'plaintext'];
  return ids.flatMap((language) => [{ scheme: 'file', language }, { scheme: 'untitled', language }]);
}

/** One entry of `tinymorph.steer.list`: the engine's intervention (`strength` for add, `value` for clamp). */
export interface SteerEntry {
  feature: number;
  mode: string;
  strength?: number;
  value?: number;
  label: string;
}

/** One line describing a steering set, for notifications. */
export function describeSteering(steering: SteerEntry[]): string {
  if (steering.length === 0) {
    return 'no steering';
  }
  return steering.map((e) => {
    const strength = e.strength ?? 0;
    const how = e.mode === 'ablate' ? 'off' : e.mode === 'clamp' ? `= ${e.value ?? 0}` :
      (strength >= 0 ? `+${strength}` : `${strength}`);
    return `${e.feature} ${how}${e.label ? ` (${e.label})` : ''}`;
  }).join(', ');
}

/** One entry of `tinymorph.preset.list`: a "write more like this" style preset. */
export interface Preset {
  name: string;
  strength: number;
  enabled: boolean;
  excerpt: string;
  error?: string;
}

/** A preset as one line of a notification: its state, name and strength. */
export function describePreset(p: Preset): string {
  return `${p.enabled ? 'on' : 'off'} · ${p.name} (${signed(p.strength)})${p.error ? ` · cannot be used: ${p.error}` : ''}`;
}

/** A preset's quick-pick description beside its name (so the name is not said twice): state, strength, excerpt. */
export function presetState(p: Preset): string {
  const excerpt = p.excerpt.trim().replace(/\s+/g, ' ');
  const quoted = excerpt === '' ? '' : ` · “${excerpt.length > 40 ? `${excerpt.slice(0, 39).trimEnd()}…` : excerpt}”`;
  return `${p.enabled ? 'on' : 'off'} (${signed(p.strength)})${quoted}${p.error ? ` · cannot be used: ${p.error}` : ''}`;
}

function signed(value: number): string {
  return value >= 0 ? `+${value}` : `${value}`;
}

/** What can be done with a preset: the server command and its argument for each choice (rename asks for `to`). */
export function presetChoices(p: Preset): { label: string; command: string; argument: Record<string, unknown> }[] {
  return [
    { label: p.enabled ? 'Switch off' : 'Switch on', command: 'tinymorph.preset.toggle',
      argument: { name: p.name, enabled: !p.enabled } },
    { label: 'Rename…', command: 'tinymorph.preset.rename', argument: { name: p.name } },
    { label: 'Remove', command: 'tinymorph.preset.remove', argument: { name: p.name } },
  ];
}

/** A preset name typed by the user: undefined when fine, else why not (the server's rule: 1 to 60 characters). */
export function checkPresetName(text: string | undefined): string | undefined {
  const name = (text ?? '').trim();
  return name === '' ? 'a name must not be empty' : name.length > 60 ? 'a name has at most 60 characters' : undefined;
}

/** A feature index typed by the user: a whole number >= 0, else an error message. */
export function parseFeature(text: string | undefined): number | string {
  const value = Number((text ?? '').trim());
  return Number.isInteger(value) && value >= 0 && (text ?? '').trim() !== '' ? value : 'a feature is a whole number >= 0';
}

/** The largest |strength| the server accepts. */
export const MAX_STRENGTH = 10;

/** Why a typed strength cannot be sent (`abc is not a number`), or undefined when it can. */
export function strengthProblem(text: string): string | undefined {
  const raw = text.trim();
  const value = Number(raw);
  if (raw === '' || !Number.isFinite(value)) {
    return `${raw || 'an empty strength'} is not a number`;
  }
  return Math.abs(value) > MAX_STRENGTH ? `${raw} is too large: a strength is between -10 and 10` : undefined;
}

/** The message shown, once, when the server cannot start or stops: the client never restarts it by itself. */
export function serverDownMessage(launch: Launch, detail: string): string {
  return `tinymorph: the server (${[launch.command, ...launch.args].join(' ')}) ${detail}. ` +
    'Run `make demo` in the tinymorph checkout and set tinymorph.server.command (or tinymorph.server.pythonPath), ' +
    'then run "tinymorph: Restart the server".';
}

/** One entry of `tinymorph.watch.list`: a feature flagged (as a diagnostic) wherever it is strong. */
export interface Watch {
  feature: number;
  threshold: number;
  severity: string;
  message: string;
  label: string;
}

/** The watched features in one line, for notifications. */
export function describeWatches(watches: Watch[]): string {
  if (watches.length === 0) {
    return 'nothing watched';
  }
  return watches.map((w) => `${w.feature}${w.label ? ` (${w.label})` : ''} above ${w.threshold}`).join(', ');
}

/** A threshold typed by the user: undefined for empty (the server picks half the feature's strongest), a positive
 * finite number, or an error message. */
export function parseThreshold(text: string | undefined): number | undefined | { error: string } {
  const raw = (text ?? '').trim();
  if (raw === '') {
    return undefined;
  }
  const value = Number(raw);
  return Number.isFinite(value) && value > 0 && value <= 10000 ? value
    : { error: 'a threshold is a positive number, at most 10000' };
}

/** A command the server offers with a feature (steer toward, suppress, watch). */
export interface FeatureCommand {
  title: string;
  command: string;
  arguments: Record<string, unknown>[];
}

/** One entry of `tinymorph.features.byExample`. */
export interface ExampleFeature {
  feature: number;
  label: string;
  examples: string[];
  watched: boolean;
  actions: FeatureCommand[];
}

/** The quick pick items of features found by example: the label, and the first corpus example as its detail
 * (the peak token without its «» marks). */
export function exampleItems(features: ExampleFeature[]): { label: string; detail: string; feature: ExampleFeature }[] {
  return features.map((f) => ({
    label: f.label + (f.watched ? ' (watched)' : ''),
    detail: (f.examples[0] ?? '').replace(/[«»]/g, ''),
    feature: f,
  }));
}
