/**
 * What the server extension (`<base_url>dask-gateway/...`) sends and takes, as types only:
 * the pure helpers use them without loading JupyterLab.
 */

/** A cluster as the server extension reports it. */
export interface ICluster {
  name: string;
  status: string;
  start_time: number;
  /** When it stopped or failed (ms since the epoch); null while it is active. */
  stop_time: number | null;
  /** A starting cluster's current phase (its last event), e.g. "Waiting in Slurm's queue". */
  phase: string | null;
  /** A failed cluster's reason, one sentence. */
  reason: string | null;
  age: number;
  dashboard_link: string | null;
  options: Record<string, unknown>;
  workers: number | null;
  cores: number | null;
  memory: number | null;
  requested: number | null;
  /** Workers asked for and still starting (null: the gateway does not say). */
  pending?: number | null;
  adapt: { minimum: number | null; maximum: number | null } | null;
  /** Its owner: only in an admin's all-users list (`GET dask-gateway/clusters?all=1`). */
  user?: string;
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

/** A cluster just created; `msg` is the gateway's warning, if any (a quota nearly used up:
 * the usage section, refreshed at once, shows it too). */
export interface ICreated {
  name: string;
  msg?: string | null;
}

/** The Python client's message for each refused field; empty when every value is valid. */
export interface IValidation {
  errors: Record<string, string>;
}

/** One event of a cluster (`GET dask-gateway/clusters/{name}/events`). */
export interface IClusterEvent {
  id: number;
  time: number;
  kind: string;
  worker: string | null;
  message: string;
  detail: string;
}

/** The events after a cursor; `done`: the cluster ended, no more will come. */
export interface IEventsAnswer {
  events: IClusterEvent[];
  cursor: number;
  done: boolean;
}

/** A cluster's logs (`GET dask-gateway/clusters/{name}/logs`): `{component: text}`; with a
 * `component`, also the byte positions of its text and whether the log can still grow. */
export interface ILogsAnswer {
  logs: Record<string, string>;
  offset?: number;
  start?: number;
  done?: boolean;
}

/** The query of a logs request; absent values are not sent. */
export interface ILogsQuery {
  component?: string;
  offset?: number;
  wait?: number;
  tail?: number;
}

/** One quota of the user (`quotas` of `GET dask-gateway/quota`): `kind` is what it limits,
 * `scope` whose use counts ("user": the user's own; "group": the members of `group`
 * together); `share` is `used / limit`. */
export interface IQuotaEntry {
  kind: string;
  scope: string;
  group: string | null;
  limit: number;
  used: number;
  share: number;
}

/** The user's use this quota period and their quotas (`GET dask-gateway/quota`, the gateway's
 * `GET /api/v1/quota`): `state` "ok", "warning" (a share at `warn_at` or more) or "exhausted"
 * (a share at 1 or more); `message` says which quota and until when (null when ok). */
export interface IQuotaAnswer {
  user: string;
  period: string;
  period_start: number;
  period_end: number;
  warn_at: number;
  when_exhausted: string;
  use: { core_hours: number; memory_gib_hours: number };
  quotas: IQuotaEntry[];
  state: string;
  message: string | null;
}
