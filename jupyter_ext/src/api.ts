/**
 * Calls to the Jupyter server extension (`<base_url>dask-gateway/...`).
 *
 * ServerConnection adds the base URL, the token and the XSRF header, so the browser never
 * needs (or sees) the user's gateway credentials.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { queryString } from './logs';
import type {
  ICluster,
  IClusterList,
  ICreated,
  IEventsAnswer,
  ILogsAnswer,
  ILogsQuery,
  IOptionField,
  IQuotaAnswer,
  IScaleResult,
  IValidation
} from './types';

export type {
  ICluster,
  IClusterList,
  ICreated,
  IEventsAnswer,
  ILogsAnswer,
  ILogsQuery,
  IOptionField,
  IQuotaAnswer,
  IQuotaEntry,
  IScaleResult,
  IValidation
} from './types';

/** An error with the message the server (or the gateway behind it) gave. */
export class GatewayError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** What the sidebar, its form and its commands need of the server: one object, passed in. */
export interface IGatewayAPI {
  listClusters(): Promise<IClusterList>;
  /** One cluster, as the list has it (the live sidebar refreshes a row with it). */
  cluster(name: string): Promise<ICluster>;
  /** The server's event stream (`dask-gateway/stream`, Server-Sent Events): the raw
   * response, its body read by `live.ts`. */
  openStream(signal: AbortSignal, allUsers?: boolean): Promise<Response>;
  options(): Promise<{ cluster_options: IOptionField[] }>;
  validateOptions(values: Record<string, unknown>): Promise<IValidation>;
  createCluster(values: Record<string, unknown>): Promise<ICreated>;
  scale(name: string, count: number): Promise<IScaleResult>;
  adapt(
    name: string,
    minimum: number | null,
    maximum: number | null,
    active?: boolean
  ): Promise<IScaleResult>;
  shutdown(name: string): Promise<null>;
  dashboard(name: string): Promise<{ url: string; gateway_url: string }>;
  /** The cluster's events after `after`; `wait` s: long-poll until one comes. */
  events(name: string, after?: number, wait?: number, signal?: AbortSignal): Promise<IEventsAnswer>;
  /** The cluster's logs; with `component` and `offset`/`wait`, a long-poll for new text. */
  logs(name: string, query: ILogsQuery, signal?: AbortSignal): Promise<ILogsAnswer>;
  /** The user's use this quota period and their quotas; a `GatewayError` with status 501
   * from a gateway that counts no use (the public dask-gateway-server). */
  quota(): Promise<IQuotaAnswer>;
}

function jsonInit(method: string, body: unknown): RequestInit {
  return {
    method,
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  };
}

function clusterPath(name: string, ...rest: string[]): string {
  return ['clusters', encodeURIComponent(name), ...rest].join('/');
}

/** The server extension's REST API, through the given Jupyter server connection settings. */
export class GatewayAPI implements IGatewayAPI {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /** Request `path` under the extension's namespace; JSON in, JSON out. */
  async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'dask-gateway', path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      if (init.signal?.aborted) {
        throw error; // the caller gave up on it: not an error to show
      }
      const reason = error instanceof Error ? error.message : String(error);
      throw new GatewayError(`Cannot reach the Jupyter server: ${reason}`, 0);
    }
    const text = await response.text();
    let data: unknown = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const body = (data ?? {}) as { error?: string; message?: string };
      let message = body.error ?? body.message;
      if (!message && response.status === 404) {
        message =
          'The Dask Gateway server extension is not enabled on this Jupyter server ' +
          '(dask_gateway_jupyter)';
      }
      throw new GatewayError(
        message || `Request failed: ${response.status} ${response.statusText}`,
        response.status
      );
    }
    return data as T;
  }

  listClusters(): Promise<IClusterList> {
    return this.request('clusters');
  }

  cluster(name: string): Promise<ICluster> {
    return this.request(clusterPath(name));
  }

  /** The event stream; `allUsers`: every user's events (admins; others get a 403). */
  openStream(signal: AbortSignal, allUsers = false): Promise<Response> {
    const url =
      URLExt.join(this.settings.baseUrl, 'dask-gateway', 'stream') + (allUsers ? '?all=1' : '');
    return ServerConnection.makeRequest(url, { signal, cache: 'no-store' }, this.settings);
  }

  options(): Promise<{ cluster_options: IOptionField[] }> {
    return this.request('options');
  }

  validateOptions(values: Record<string, unknown>): Promise<IValidation> {
    return this.request('options/validate', jsonInit('POST', { cluster_options: values }));
  }

  createCluster(values: Record<string, unknown>): Promise<ICreated> {
    return this.request('clusters', jsonInit('POST', { cluster_options: values }));
  }

  scale(name: string, count: number): Promise<IScaleResult> {
    return this.request(clusterPath(name, 'scale'), jsonInit('POST', { count }));
  }

  adapt(
    name: string,
    minimum: number | null,
    maximum: number | null,
    active = true
  ): Promise<IScaleResult> {
    return this.request(clusterPath(name, 'adapt'), jsonInit('POST', { minimum, maximum, active }));
  }

  shutdown(name: string): Promise<null> {
    return this.request(clusterPath(name), { method: 'DELETE' });
  }

  dashboard(name: string): Promise<{ url: string; gateway_url: string }> {
    return this.request(clusterPath(name, 'dashboard'));
  }

  events(
    name: string,
    after?: number,
    wait?: number,
    signal?: AbortSignal
  ): Promise<IEventsAnswer> {
    return this.request(clusterPath(name, 'events') + queryString({ after, wait }), { signal });
  }

  quota(): Promise<IQuotaAnswer> {
    return this.request('quota');
  }

  logs(name: string, query: ILogsQuery, signal?: AbortSignal): Promise<ILogsAnswer> {
    const { component, offset, wait, tail } = query;
    return this.request(
      clusterPath(name, 'logs') + queryString({ component, offset, wait, tail }),
      {
        signal
      }
    );
  }
}
