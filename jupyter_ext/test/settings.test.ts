import { describe, expect, it } from 'vitest';

import schema from '../schema/plugin.json';
import { DEFAULT_SETTINGS, GatewaySettings, readSettings } from '../src/settings';

describe('readSettings', () => {
  it('gives the defaults for nothing or junk', () => {
    for (const junk of [undefined, null, 3, 'x', [], {}]) {
      expect(readSettings(junk)).toEqual(DEFAULT_SETTINGS);
    }
    expect(
      readSettings({ pollInterval: 'fast', showStopped: 'yes', defaultLayout: 'task' })
    ).toEqual(DEFAULT_SETTINGS);
  });

  it('takes valid values', () => {
    expect(
      readSettings({ pollInterval: 10, showStopped: false, defaultLayout: ['individual-graph'] })
    ).toEqual({ pollInterval: 10, showStopped: false, defaultLayout: ['individual-graph'] });
  });

  it('clamps the poll interval and cleans the layout', () => {
    expect(readSettings({ pollInterval: 0 }).pollInterval).toBe(1);
    expect(readSettings({ pollInterval: -5 }).pollInterval).toBe(1);
    expect(readSettings({ pollInterval: 1e9 }).pollInterval).toBe(3600);
    expect(readSettings({ pollInterval: NaN }).pollInterval).toBe(3);
    expect(readSettings({ pollInterval: Infinity }).pollInterval).toBe(3);
    expect(
      readSettings({ defaultLayout: ['/individual-progress', ' ', 7, ' individual-graph '] })
        .defaultLayout
    ).toEqual(['individual-progress', 'individual-graph']);
    expect(readSettings({ defaultLayout: [] }).defaultLayout).toEqual([]);
  });

  it('has the defaults the schema has', () => {
    for (const [key, value] of Object.entries(DEFAULT_SETTINGS)) {
      expect(schema.properties[key as keyof typeof schema.properties].default).toEqual(value);
    }
    expect(Object.keys(schema.properties).sort()).toEqual(Object.keys(DEFAULT_SETTINGS).sort());
    expect(schema.properties.pollInterval.minimum).toBe(1);
    expect(schema.properties.pollInterval.maximum).toBe(3600);
  });
});

describe('GatewaySettings', () => {
  it('tells listeners at once and on every change', () => {
    const settings = new GatewaySettings();
    const seen: boolean[] = [];
    settings.connect(s => seen.push(s.showStopped));
    settings.update({ showStopped: false });
    settings.update({ showStopped: true, pollInterval: 7 });
    expect(seen).toEqual([true, false, true]);
    expect(settings.current.pollInterval).toBe(7);
  });

  it('never shares the default layout array', () => {
    const a = readSettings({});
    a.defaultLayout.push('x');
    expect(readSettings({}).defaultLayout).toEqual(DEFAULT_SETTINGS.defaultLayout);
  });
});
