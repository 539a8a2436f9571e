/**
 * What the server extension (`<base_url>dask-gateway/...`) sends and takes, as types only:
 * the pure helpers use them without loading JupyterLab.
 */

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

/** The answer of a scale or adapt: `msg` is the gateway's warning (e.g. clamped). */
export interface IScaleResult {
  ok: boolean;
  msg: string | null;
}

/** The Python client's message for each refused field; empty when every value is valid. */
export interface IValidation {
  errors: Record<string, string>;
}
