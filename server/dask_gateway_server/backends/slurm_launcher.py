"""Runs as the cluster's user (the gateway starts it with runuser/sudo): stages the cluster's
secrets in files only that user can read, submits Slurm jobs, and cleans up.

The gateway sends one JSON request on stdin and reads one JSON answer from stdout, so no
secret ever appears on a command line. Standard library only: the gateway runs this file's
source with ``python -I -S -c``, so the user needs no access to the gateway's packages.

Requests:
``{"action": "submit", "staging_dir": d, "files": {name: text}, "env": {...},
"jobs": [{"script": s, "args": [...]}, ...], "timeout": seconds}`` (sbatch calls past the
timeout are killed, later jobs not submitted) -> ``{"results": [{"job_id": id} |
{"error": message}, ...]}``; ``{"action": "cleanup", "staging_dir": d, "log": name}`` ->
``{"log_tail": text}``; ``{"action": "read", "staging_dir": d, "name": file, "offset": n | None,
"limit": n}`` -> ``{"data": base64, "start": n}`` (a job output file, read as the user where the
gateway cannot: it runs as a service account, or root is squashed on a shared file system), or
``{"missing": true}``. A request that fails as a whole answers ``{"error": message}``.
"""

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import time

LOG_TAIL_BYTES = 4000


def _private_dir(path):
    """Create ``path`` (and parents) as ours, mode 0700; refuse anything that isn't that."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeError(f"staging directory {path} is not a directory owned by this user")
    os.chmod(path, 0o700)


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def submit(req):
    staging = req["staging_dir"]
    parent = os.path.dirname(staging.rstrip("/"))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    _private_dir(staging)
    for name, text in req.get("files", {}).items():
        _write_private(os.path.join(staging, name), text)
    env = dict(req.get("env", {}))
    for key in ("HOME", "USER", "LOGNAME"):
        if key in os.environ:
            env[key] = os.environ[key]
    results = []
    timeout = req.get("timeout")
    deadline = time.monotonic() + timeout if timeout else None
    for job in req["jobs"]:
        if deadline is not None and time.monotonic() >= deadline:
            # The gateway gives up on this run soon: submit nothing more it won't hear of.
            results.append({"error": f"not submitted: sbatch calls took over {timeout:g} s"})
            continue
        try:
            proc = subprocess.run(
                [req.get("sbatch", "sbatch"), "--parsable", *job["args"]],
                input=job["script"],
                capture_output=True,
                text=True,
                env=env,
                cwd=staging,
                timeout=None if deadline is None else max(0.1, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:  # run() killed it
            results.append({"error": f"sbatch timed out after {timeout:g} s"})
            deadline = time.monotonic()  # and the jobs after it are not submitted
            continue
        out = proc.stdout.strip()
        if proc.returncode != 0 or not out:
            err = proc.stderr.strip() or out or f"sbatch exited with {proc.returncode}"
            results.append({"error": err})
        else:
            # "id" or "id;cluster" on federated setups.
            results.append({"job_id": out.splitlines()[-1].split(";")[0].strip()})
    return {"results": results}


def cleanup(req):
    staging = req["staging_dir"]
    tail = ""
    log = req.get("log")
    if log:
        try:
            fd = os.open(os.path.join(staging, log), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
                tail = f.read().decode(errors="replace")
        except OSError:
            pass
    if os.path.lexists(staging):
        if os.path.islink(staging):
            os.unlink(staging)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return {"log_tail": tail}


def read(req):
    """A file of the staging directory, as ``read_user_file`` reads it (as this user, who
    may read it anyway: no link of theirs gives them more)."""
    name = req["name"]
    if "/" in name or name in ("", ".", ".."):
        return {"missing": True}
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(os.path.join(req["staging_dir"], name), flags)
    except OSError:
        return {"missing": True}
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return {"missing": True}
        limit = max(0, int(req["limit"]))
        start = max(0, st.st_size - limit)
        if req.get("offset") is not None:
            start = min(max(start, int(req["offset"])), st.st_size)
        f.seek(start)
        data = f.read(min(limit, st.st_size - start))
    return {"data": base64.b64encode(data).decode(), "start": start}


def main():
    os.umask(0o077)
    try:
        req = json.load(sys.stdin)
        action = {"submit": submit, "cleanup": cleanup, "read": read}[req["action"]]
        answer = action(req)
    except Exception as e:  # the gateway reports this message, so make it the whole story
        answer = {"error": f"{type(e).__name__}: {e}"}
    json.dump(answer, sys.stdout)
    sys.stdout.flush()
    return 0 if "error" not in answer else 1


if __name__ == "__main__":
    sys.exit(main())
