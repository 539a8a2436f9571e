/**
 * The code that connects a notebook to a cluster (pure: unit-tested without JupyterLab).
 */

/** Python source that connects to cluster `name`; the gateway's address and credentials come
 * from the kernel's dask config, as they do for the Jupyter server. */
export function connectCode(name: string): string {
  return [
    'from dask_gateway import Gateway',
    '',
    'gateway = Gateway()',
    // A JSON string is a valid Python string literal, whatever the name holds.
    `cluster = gateway.connect(${JSON.stringify(name)})`,
    'client = cluster.get_client()',
    'client'
  ].join('\n');
}
