"""File operations a privileged gateway may do near files its users control.

The gateway often runs as root, and each cluster's working directory belongs to its user,
who has a shell in it (the scheduler runs their code). Anything there can be swapped for a
symlink, a FIFO or a hard link at any moment, so root must never resolve a path inside it:
either the user's own process does the work (the launchers create worker directories and
open logs after dropping privileges), or root works from a directory descriptor it opened
itself, with ``O_NOFOLLOW`` on every step and checks on what it opened. Everything of that
kind lives here, so that it is written once.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat

from .base import LogChunk

__all__ = [
    "UnsafePath",
    "ensure_private_dir",
    "make_owned_tree",
    "read_range",
    "read_tail",
    "remove_tree",
    "check_python_trusted",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UnsafePath(RuntimeError):
    """A path another user could change under the gateway's feet; the message says which."""


def _describe_owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _check_ancestors(path: str, trusted: set[int]) -> None:
    """Every directory above ``path`` must be owned by a trusted uid and writable by no one
    else, unless sticky (like /tmp: others may not rename or remove what they do not own).
    Symlinks on the way are checked as links (who may replace them) and where they lead."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    while True:
        st = os.lstat(parent)
        if st.st_uid not in trusted:
            raise UnsafePath(f"{parent} is owned by {_describe_owner(st.st_uid)}")
        if (
            not stat.S_ISLNK(st.st_mode)
            and st.st_mode & _GROUP_OTHER_WRITE
            and not st.st_mode & stat.S_ISVTX
        ):
            raise UnsafePath(f"{parent} is writable by group or others")
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    real = os.path.realpath(os.path.dirname(path))
    if real != os.path.dirname(path):
        _check_ancestors(os.path.join(real, "x"), trusted)


def ensure_private_dir(path: str, what: str = "directory") -> None:
    """Create ``path`` (mode 0755, owned by this process's user) if it is missing, without
    following a symlink, and check that no one else can change it or what leads to it.

    Raises UnsafePath with a message for the administrator otherwise: someone who created the
    directory first (in /tmp, anyone can) would control every path the gateway makes in it.
    """
    path = os.path.abspath(path)
    me = os.geteuid()
    trusted = {0, me}
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    real_parent = os.path.realpath(parent)
    _check_ancestors(os.path.join(real_parent, "x"), trusted)
    try:
        os.mkdir(path, 0o755)  # never follows a symlink: an existing one is EEXIST
    except FileExistsError:
        pass
    st = os.lstat(path)
    advice = (
        f"remove it, or set LocalBackend.clusters_directory to a {what} of its own (outside /tmp)"
    )
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"The {what} {path} is a symbolic link: {advice}")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"The {what} {path} is not a directory: {advice}")
    if st.st_uid != me:
        raise UnsafePath(
            f"The {what} {path} is owned by {_describe_owner(st.st_uid)}, not by "
            f"the gateway's user ({_describe_owner(me)}): {advice}"
        )
    if st.st_mode & _GROUP_OTHER_WRITE:
        raise UnsafePath(
            f"The {what} {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):o}): {advice}"
        )


def make_owned_tree(
    path: str, files: dict[str, bytes], dirs: list[str], owner: tuple[int, int] | None
) -> None:
    """Create the fresh directory ``path`` holding ``dirs`` and ``files`` (relative names, one
    level of directories), then hand it all to ``owner`` (uid, gid).

    The directory stays this process's (mode 0700) until everything inside exists, so no one
    else can enter it meanwhile; the top is given away last. Its parent must be one only this
    process can write to (see ensure_private_dir).
    """
    os.mkdir(path, 0o700)
    top = os.open(path, _DIR_FLAGS)
    try:
        made: list[tuple[int, str]] = []
        subdirs: dict[str, int] = {"": top}
        try:
            for name in dirs:
                os.mkdir(name, 0o700, dir_fd=top)
                subdirs[name] = os.open(name, _DIR_FLAGS, dir_fd=top)
                made.append((top, name))
            for rel, data in files.items():
                folder, name = os.path.split(rel)
                dfd = subdirs[folder]
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                made.append((dfd, name))
            if owner is not None:
                for dfd, name in made:
                    os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
                os.fchown(top, *owner)
        finally:
            for name, fd in subdirs.items():
                if name:
                    os.close(fd)
    finally:
        os.close(top)


def _open_below(directory: str, relpath: str) -> int | None:
    """A read-only descriptor of ``directory/relpath``, opened without following a symlink
    at any step below ``directory`` and without blocking (a FIFO is opened, not waited on);
    None if any step is missing or a link."""
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    fds: list[int] = []
    try:
        fds.append(os.open(directory, _DIR_FLAGS))
        for part in parts[:-1]:
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        return os.open(
            parts[-1],
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
            dir_fd=fds[-1],
        )
    except OSError:
        return None
    finally:
        for d in fds:
            os.close(d)


def read_range(
    directory: str, relpath: str, offset: int | None, limit: int, owner: int | None
) -> tuple[bytes, int] | None:
    """Bytes of the regular file ``directory/relpath`` and the position of the first:
    from ``offset`` (None: the last ``limit`` bytes), at most ``limit`` of them, the newest
    when more follow ``offset`` (a log of gigabytes costs one seek, never a read of it all).
    An ``offset`` past the end gives no bytes, at the end. None if the file is missing, not a
    regular file, or (``owner`` given) not owned by ``owner``; read as in ``read_tail``.
    """
    fd = _open_below(directory, relpath)
    if fd is None:
        return None
    return _read_open(fd, offset, limit, owner)


def _read_open(
    fd: int, offset: int | None, limit: int, owner: int | None
) -> tuple[bytes, int] | None:
    """``read_range``'s read of an open descriptor (closed here): None unless a regular file
    (of ``owner``'s, if given)."""
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner):
            return None
        size = st.st_size
        start = max(0, size - limit)
        if offset is not None:
            start = min(max(start, offset), size)
        f.seek(start)
        return f.read(size - start), start


#: Log files are read at most this many links deep (as the kernel would).
_MAX_LINKS = 40
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def open_directory(path: str, trusted: set[int]) -> int:
    """A descriptor of the directory ``path`` (blocking). A symlink on the way is followed
    only where a directory owned by a ``trusted`` uid holds it (a site's /home -> /data/home),
    never in one a user owns (their ``~/.dask-gateway`` swapped for a link to another user's
    files); its target is walked by the same rule. Raises OSError otherwise."""
    parts = [p for p in os.path.normpath(os.path.abspath(path)).split("/") if p]
    todo = list(reversed(parts))
    links = 0
    fd = os.open("/", _DIR_FLAGS)
    try:
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            here_trusted = os.fstat(fd).st_uid in trusted
            if part == ".." and not here_trusted:
                raise OSError(errno.EINVAL, f"'..' from a user's directory in {path}")
            try:
                step = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise
                if not here_trusted or st.st_uid not in trusted:
                    raise OSError(errno.ELOOP, f"a user's symlink {part!r} in {path}") from None
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, f"too many links in {path}") from None
                target = os.readlink(part, dir_fd=fd)
                todo.extend(reversed([p for p in target.split("/") if p]))
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                continue
            os.close(fd)
            fd = step
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_user_file(
    directory: str, name: str, offset: int | None, limit: int, owner: int, trusted: set[int]
) -> LogChunk | None:
    """At most ``limit`` bytes of the file ``directory/name`` from ``offset`` (None: the last
    ``limit`` bytes; the newest when more follow ``offset``; past the end: none, at the end),
    as ``read_range`` reads a local log. None unless it is a regular file of ``owner``'s,
    reached without following a link the user could plant (``open_directory``). Raises
    PermissionError where this process may not read there at all (a service account; root
    on a shared file system that squashes it): the user's own process must. Blocking."""
    if "/" in name or name in ("", ".", ".."):
        return None
    try:
        dir_fd = open_directory(directory, trusted)
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        raise
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    got = _read_open(fd, offset, limit, owner)
    if got is None:
        return None
    data, start = got
    return LogChunk(data, start, start + len(data))


def read_tail(directory: str, relpath: str, size: int, owner: int | None) -> str:
    """The last ``size`` bytes of the regular file ``directory/relpath``, decoded; empty if it
    is missing, not a regular file, or (``owner`` given) not owned by ``owner``.

    No symlink is followed below ``directory`` and nothing blocks (a FIFO is not read): the
    user may have replaced the file with anything, a link to /etc/shadow included.
    """
    got = read_range(directory, relpath, None, size, owner)
    return got[0].decode(errors="replace") if got is not None else ""


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything in it, never following a symlink inside (the tree
    may be a user's, changing while it is removed). Missing is fine."""
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover (Linux has it)
        raise UnsafePath("This platform cannot remove a user's directory safely")
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOENT:
            shutil.rmtree(path, ignore_errors=True)


# -- is this Python safe to run as root? ------------------------------------------------


def _pth_entries(site_dir: str) -> list[str]:
    """Directories that ``.pth`` files in ``site_dir`` add to sys.path."""
    out = []
    for name in _listdir(site_dir):
        if not name.endswith(".pth"):
            continue
        try:
            with open(os.path.join(site_dir, name), encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            entry = os.path.normpath(os.path.join(site_dir, line))
            if os.path.isdir(entry):
                out.append(entry)
    return out


class _TreeCheck:
    """Walks trees: every entry must be owned by root and writable by no one else."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    @staticmethod
    def entry(path: str, st: os.stat_result) -> None:
        if st.st_uid != 0:
            raise UnsafePath(f"{path} is owned by {_describe_owner(st.st_uid)}")
        if st.st_mode & _GROUP_OTHER_WRITE:
            raise UnsafePath(f"{path} is writable by group or others")

    def target(self, path: str, skip: tuple[str, ...] = ()) -> None:
        """Check ``path`` (resolved), what leads to it and, for a directory, all it holds
        but ``skip``."""
        if not os.path.lexists(path):
            return
        _check_ancestors(path, {0})
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return  # a dangling link imports nothing
        if real != os.path.abspath(path):
            _check_ancestors(real, {0})
        if (st.st_dev, st.st_ino) in self.seen:
            return
        self.seen.add((st.st_dev, st.st_ino))
        self.entry(real, st)
        if stat.S_ISDIR(st.st_mode):
            self._walk(real, skip)

    def _walk(self, top: str, skip: tuple[str, ...]) -> None:
        stack = [top]
        links = []
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as it:
                for e in it:
                    if e.path in skip:
                        continue
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        links.append(e.path)
                        continue
                    self.entry(e.path, st)
                    if stat.S_ISDIR(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        if key not in self.seen:
                            self.seen.add(key)
                            stack.append(e.path)
        for link in links:  # in a root-owned folder the link is fixed; where it leads is not
            self.target(link)


def check_python_trusted(python: str, pythonpath: str = "") -> None:
    """Raise UnsafePath unless the interpreter ``python`` and everything it imports from are
    owned by root and writable by no one else: the fork server imports them as root.

    Worked out from the installation's layout, without running it (running it as root would
    be the very risk): the interpreter, its standard library and libpython, the venv's
    site-packages (the base installation's too when they are used), what their ``.pth``
    files add, and ``pythonpath`` (the PYTHONPATH it will run with).
    """
    exe = os.path.abspath(python)
    real = os.path.realpath(exe)
    base = os.path.dirname(os.path.dirname(real))
    venv = os.path.dirname(os.path.dirname(exe))
    check = _TreeCheck()
    try:
        check.target(exe)
        cfg = os.path.join(venv, "pyvenv.cfg")
        system = True  # a plain installation imports its own site-packages
        if os.path.isfile(cfg):
            check.target(cfg)
            with open(cfg, encoding="utf-8", errors="replace") as f:
                system = bool(
                    re.search(r"^\s*include-system-site-packages\s*=\s*true", f.read(), re.M | re.I)
                )
        else:
            venv = ""
        match = re.search(r"python(\d+\.\d+)", os.path.basename(real))
        versions = (
            [match.group(1)]
            if match
            else [
                n[len("python") :]
                for n in _listdir(os.path.join(base, "lib"))
                if re.fullmatch(r"python\d+\.\d+", n)
            ]
        )
        lib = os.path.join(base, "lib")
        for name in _listdir(lib):  # libpython and the zipped standard library
            if name.startswith("libpython") or re.fullmatch(r"python\d+\.zip", name):
                check.target(os.path.join(lib, name))
        sites: list[str] = []
        for version in versions:
            stdlib = os.path.join(lib, f"python{version}")
            own_sites = [
                os.path.join(stdlib, "site-packages"),
                os.path.join(lib, "python3", "dist-packages"),
                os.path.join(base, "local", "lib", f"python{version}", "dist-packages"),
            ]
            check.target(stdlib, () if system else (own_sites[0],))
            if system:
                sites += own_sites
            if venv:
                sites.append(os.path.join(venv, "lib", f"python{version}", "site-packages"))
        for site in sites:
            check.target(site)
            for extra in _pth_entries(site):
                check.target(extra)
        for entry in filter(None, pythonpath.split(os.pathsep)):
            check.target(os.path.abspath(entry))
    except OSError as e:
        raise UnsafePath(f"cannot check {python}: {e}") from None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
