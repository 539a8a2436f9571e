import { describe, expect, it } from 'vitest';

import { AllUsersView } from '../src/allusers';
import { GatewayAPI, GatewayError } from '../src/api';
import type { IClusterList } from '../src/types';

/** A GatewayAPI whose requests answer from `routes` (path -> answer or error). */
function fakeAPI(routes: Record<string, unknown>): { api: GatewayAPI; asked: string[] } {
  const asked: string[] = [];
  const api = Object.create(GatewayAPI.prototype) as GatewayAPI;
  api.request = <T>(path: string): Promise<T> => {
    asked.push(path);
    const answer = routes[path];
    return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer as T);
  };
  return { api, asked };
}

const own: IClusterList = { address: 'http://gw', clusters: [] };
const every: IClusterList = { address: 'http://gw', clusters: [] };

describe('AllUsersView', () => {
  it('is offered only to admins, as the server says', async () => {
    const { api } = fakeAPI({ admin: { admin: false } });
    const view = new AllUsersView(api);
    expect(await view.check()).toBe(false);
    view.active = true;
    expect(view.active).toBe(false); // a user cannot switch it on

    const failing = new AllUsersView(fakeAPI({ admin: new GatewayError('down', 502) }).api);
    expect(await failing.check()).toBe(false);
    const odd = new AllUsersView(fakeAPI({ admin: { admin: 'yes' } }).api);
    expect(await odd.check()).toBe(false);
  });

  it('lists every user only while on; other calls are the base API', async () => {
    const { api, asked } = fakeAPI({
      admin: { admin: true },
      clusters: own,
      'clusters?all=1': every
    });
    const view = new AllUsersView(api);
    let changes = 0;
    view.connect(() => changes++);
    const scoped = view.api();
    expect(await view.check()).toBe(true);
    expect(await scoped.listClusters()).toBe(own);
    view.active = true;
    expect(await scoped.listClusters()).toBe(every);
    view.active = false;
    expect(await scoped.listClusters()).toBe(own);
    expect(asked).toEqual(['admin', 'clusters', 'clusters?all=1', 'clusters']);
    expect(changes).toBe(3);
    expect(Object.getPrototypeOf(scoped)).toBe(api); // every other method is the base's
    expect(scoped).toBeInstanceOf(GatewayAPI);
  });

  it('turns off when the gateway says no longer an admin', async () => {
    const refused = new GatewayError('User x is not an admin', 403);
    const { api } = fakeAPI({ admin: { admin: true }, 'clusters?all=1': refused });
    const view = new AllUsersView(api);
    await view.check();
    view.active = true;
    await expect(view.api().listClusters()).rejects.toBe(refused);
    expect(view.active).toBe(false);
    expect(view.isAdmin).toBe(false);
  });

  it('stays on through other errors (the gateway is down: the list says so)', async () => {
    const down = new GatewayError('Cannot reach the Dask Gateway', 502);
    const { api } = fakeAPI({ admin: { admin: true }, 'clusters?all=1': down });
    const view = new AllUsersView(api);
    await view.check();
    view.active = true;
    await expect(view.listAll()).rejects.toBe(down);
    expect(view.active).toBe(true);
  });
});
