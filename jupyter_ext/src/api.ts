/**
 * Calls to the Jupyter server extension (`<base_url>dask-gateway/...`).
 *
 * ServerConnection adds the base URL, the token and the XSRF header, so the browser never
 * needs (or sees) the user's gateway credentials.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A cluster as the server extension reports it. */
export interface ICluster {
  name: string;
  status: string;
  start_time: number;
  age: number;
  dashboard_link: string | null;
  options: Record<string, unknown>;
  workers: number | null;
  cores: number | null;
  memory: number | null;
  requested: number | null;
  adapt: { minimum: number | null; maximum: number | null } | null;
}

export interface IClusterList {
  address: string;
  clusters: ICluster[];
}

/** One field of the gateway's options spec (`GET /api/v1/options`). */
export interface IOptionField {
  field: string;
  label: string;
  default: unknown;
  spec: {
    type: string;
    min?: number | null;
    max?: number | null;
    options?: string[];
  };
}

export interface IScaleResult {
  ok: boolean;
  msg: string | null;
}

/** An error with the message the server (or the gateway behind it) gave. */
export class GatewayError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** Request `path` under the extension's namespace; JSON in, JSON out. */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'dask-gateway', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new GatewayError(
      `Cannot reach the Jupyter server: ${(error as Error).message ?? error}`,
      0
    );
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    let message: string | undefined = data?.error ?? data?.message;
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

function jsonInit(method: string, body: unknown): RequestInit {
  return {
    method,
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  };
}

export const api = {
  listClusters: (): Promise<IClusterList> => requestAPI('clusters'),
  options: (): Promise<{ cluster_options: IOptionField[] }> =>
    requestAPI('options'),
  createCluster: (
    values: Record<string, unknown>
  ): Promise<{ name: string }> =>
    requestAPI('clusters', jsonInit('POST', { cluster_options: values })),
  scale: (name: string, count: number): Promise<IScaleResult> =>
    requestAPI(
      `clusters/${encodeURIComponent(name)}/scale`,
      jsonInit('POST', { count })
    ),
  adapt: (
    name: string,
    minimum: number | null,
    maximum: number | null,
    active = true
  ): Promise<IScaleResult> =>
    requestAPI(
      `clusters/${encodeURIComponent(name)}/adapt`,
      jsonInit('POST', { minimum, maximum, active })
    ),
  shutdown: (name: string): Promise<null> =>
    requestAPI(`clusters/${encodeURIComponent(name)}`, { method: 'DELETE' }),
  dashboard: (name: string): Promise<{ url: string; gateway_url: string }> =>
    requestAPI(`clusters/${encodeURIComponent(name)}/dashboard`)
};
