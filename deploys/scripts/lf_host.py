"""llamafleet's helper on POSIX hosts (Linux, macOS): stdlib only, Python 3.8+.

The deploy runs it on the host, never on the controller:
  state SPEC_JSON       print the host's whole state as one JSON document (the HostState fact
                        runs this file inline, so it works before anything is installed)
  fetch SPEC_JSON       download one file resumably, verify its sha256, rename it into place;
                        "sources" lists URLs tried in order (the cluster's cache, then upstream)
  install SPEC_JSON     install one llama.cpp build (release archive or source build) in its own
                        folder and, unless the spec says "switch": false, switch ``current`` to it
  switch SPEC_JSON      an upgrade's switch: remember the previous build and the files about to be
                        rewritten (``state/rollback.json``), then point ``current`` at the new build
  rollback SPEC_JSON    undo the last switch: restore those files and point ``current`` back
  wait SPEC_JSON        wait until the host's services are ready (process up, HTTP /health, /props
                        build, one short completion; a listening socket for RPC workers)
  token PATH USER       create a random bearer token file (0600, owned by USER) if missing, or
                        repair its mode and owner; a token path that is a link is refused
  secret PATH USER UPLOAD
                        put the secret the deploy uploaded to UPLOAD at PATH (0600, owned by
                        USER) and remove the upload; a secret path that is a link is refused
  folder PATH USER      make the folder PATH (0700, owned by USER: an rpc-worker's cache) or
                        repair its mode and owner; a link in its place is refused
  serve ADDRESS PORT FOLDER...
                        the cluster's file cache (or a peer): serve the FOLDERs' verified files
                        read-only on ADDRESS:PORT only (GET /<sha256>/<name>, with Range)

Exit codes: 0 done, 2 bad input or precondition, 3 verification failed. Errors are one line on
stderr starting with "llamafleet:", so pyinfra shows the reason rather than a traceback.
"""

import errno
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
import zipfile
import zlib

try:
    from lzma import LZMAError
except ImportError:  # a Python built without lzma: tarfile then refuses .xz with a TarError
    LZMAError = tarfile.TarError

CHUNK = 1 << 20
RETRIES = 5
# The RPC worker is "rpc-server" in older builds (b8942) and "ggml-rpc-server" in newer ones (b11434).
BINARIES = ("llama-server", "ggml-rpc-server", "rpc-server")
VERSION_RE = re.compile(r"version: (\S+) \(build (\d+), commit (\S+)\)|version: (\d+) \((\S+)\)")


class Failure(Exception):
    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


# --- small utilities ---------------------------------------------------------------------------


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path, data, mode=0o644):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit)
        n /= 1024.0


def stamp_path(path):
    head, name = os.path.split(path)
    return os.path.join(head, ".%s.verified" % name)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --- model files: stamp, resumable download ----------------------------------------------------


def is_verified(path, sha256):
    """True when the stamp written after the last hash still matches size and mtime: no re-hash."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    stamp = read_json(stamp_path(path)) or {}
    return stamp.get("sha256") == sha256 and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns


def write_stamp(path, sha256):
    st = os.stat(path)
    write_atomic(stamp_path(path), json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}))


def check_free_disk(directory, needed, what):
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise Failure("not enough free disk in %s for %s: need %s, %s free" % (directory, what, human(needed), human(free)))


def download_resumable(url, partial, size):
    """Append to ``partial`` until it holds the whole file, resuming with HTTP Range after a cut.
    ``size`` None (a release archive the inventory gives no size for): the server's answer tells it
    (Content-Length of a 200, the total of a 206's Content-Range), so nothing asks for it separately."""
    last_error = None
    for _attempt in range(RETRIES):
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        if size is not None and have > size:
            os.remove(partial)
            have = 0
        if size is not None and have == size:
            open(partial, "ab").close()  # an empty file is a (short) download too
            return size
        request = urllib.request.Request(url, headers={"Range": "bytes=%d-" % have} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                # A server that ignores Range answers 200 with the whole file: start over.
                mode = "ab" if resp.status == 206 else "wb"
                done = have if mode == "ab" else 0
                size = size if size is not None else answered_size(resp, done)
                copy_with_progress(resp, partial, mode, done, size, url)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have and size is None:
                return have  # nothing past what we hold: the hash decides whether it is the file
            raise Failure("download of %s failed: HTTP %d %s" % (url, err.code, err.reason))
        except (urllib.error.URLError, OSError, socket.timeout, http.client.HTTPException) as err:
            if isinstance(getattr(err, "reason", err), ConnectionRefusedError):
                raise Failure("cannot connect to %s: connection refused" % url)  # nothing listens: no retry
            last_error = err  # a cut connection: resume from what arrived
            time.sleep(1)
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    if have != size:
        raise Failure("download of %s stopped at %s of %s (%s); run the deploy again to resume"
                      % (url, human(have), human(size or 0) if size is not None else "an unknown size",
                         last_error or "short response"))
    return size


def answered_size(resp, done):
    """The whole file's size from a GET answer (200: Content-Length; 206: Content-Range's total)."""
    try:
        if resp.status == 206:
            return int(resp.headers["Content-Range"].rsplit("/", 1)[1])
        return done + int(resp.headers["Content-Length"])
    except (AttributeError, IndexError, TypeError, ValueError):
        raise Failure("%s answered without the file's size (no Content-Length / Content-Range)" % resp.geturl())


def copy_with_progress(resp, partial, mode, done, size, url):
    name = url.rsplit("/", 1)[-1]
    origin = urllib.parse.urlsplit(url).netloc
    last_report = 0.0
    with open(partial, mode) as out:
        for block in iter(lambda: resp.read(CHUNK), b""):
            out.write(block)
            done += len(block)
            now = time.monotonic()
            if now - last_report > 2 or done == size:
                last_report = now
                sys.stderr.write("llamafleet: %s %s / %s (%d%%) from %s\n"
                                 % (name, human(done), human(size), 100 * done // max(size, 1), origin))
                sys.stderr.flush()
        out.flush()
        os.fsync(out.fileno())


def say(message):
    sys.stderr.write("llamafleet: %s\n" % message)
    sys.stderr.flush()


def fetch(spec):
    """Place ``spec['dest']`` with the expected sha256; a bad download never touches a good file.

    ``spec['sources']`` (default: ``[spec['url']]``) are tried in order, e.g. the cluster's file
    cache, then upstream. What a source sends is hashed before it replaces anything: a source that
    cannot be reached, or whose bytes have another sha256, is skipped with one line on stderr and the
    next one is tried; only when every source failed does the fetch fail."""
    dest, sha256 = spec["dest"], spec["sha256"]
    sources = spec.get("sources") or [spec["url"]]
    directory = os.path.dirname(dest)
    name = os.path.basename(dest)
    os.makedirs(directory, exist_ok=True)
    if is_verified(dest, sha256):
        return "verified"
    size = int(spec["size"]) if spec.get("size") else None
    if os.path.exists(dest) and (size is None or os.path.getsize(dest) == size) and sha256_file(dest) == sha256:
        write_stamp(dest, sha256)
        return "verified (stamped)"
    # The temp file lives beside the destination so the final rename is atomic on one filesystem.
    partial = os.path.join(directory, ".%s.partial" % name)
    if size is not None:
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        check_free_disk(directory, max(size - have, 0), name)
    kept = "the existing file was left in place" if os.path.exists(dest) else "nothing was installed"
    failures = []
    for index, url in enumerate(sources):
        more = index + 1 < len(sources)
        # Bytes kept from an earlier source or run may be the wrong ones: on a mismatch after a
        # resume, this source gets one more try from the first byte.
        for from_zero in (False, True):
            resumed = os.path.exists(partial) and os.path.getsize(partial) > 0
            try:
                download_resumable(url, partial, size)
            except Failure as err:
                failures.append(str(err))
                if more:
                    say("%s: skipping %s: %s" % (name, url, err))
                break
            got = sha256_file(partial)
            if got == sha256:
                os.replace(partial, dest)
                write_stamp(dest, sha256)
                return "downloaded %s from %s" % (name, url) if len(sources) > 1 else "downloaded"
            os.remove(partial)
            if resumed and not from_zero:
                continue
            failures.append("sha256 mismatch for %s: expected %s, got %s" % (url, sha256, got))
            if more:
                say("%s: skipping %s: it sent bytes with sha256 %s, not %s" % (name, url, got, sha256))
            break
    mismatch = any(f.startswith("sha256 mismatch") for f in failures)
    if len(sources) == 1:
        raise Failure(failures[0] + ("; %s" % kept if mismatch else ""), code=3 if mismatch else 2)
    raise Failure("no source gave %s with sha256 %s (%s); %s" % (name, sha256, "; ".join(failures), kept),
                  code=3 if mismatch else 2)


# --- llama.cpp builds --------------------------------------------------------------------------


def library_env(bin_dir):
    env = dict(os.environ)
    for var in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
        env[var] = bin_dir + (os.pathsep + env[var] if env.get(var) else "")
    return env


def version_output(bin_dir):
    """First line of ``llama-server --version`` (it prints to stderr), or None if it cannot run."""
    server = os.path.join(bin_dir, "llama-server")
    if not os.path.exists(server):
        return None
    try:
        proc = subprocess.run([server, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=library_env(bin_dir), timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return "error: %s" % err
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("version:"):
            return line.strip()
    return "error: no version line (exit %d)" % proc.returncode


def reported_build(line):
    match = VERSION_RE.search(line or "")
    if not match:
        return None
    return int(match.group(2) or match.group(4))


def binary_hashes(bin_dir):
    return {name: sha256_file(os.path.join(bin_dir, name)) for name in BINARIES
            if os.path.exists(os.path.join(bin_dir, name))}


def member_path(root, archive, name, kind, link=None):
    """Where an archive member lands under ``root``, or a Failure: members stay inside the
    destination. Refused: absolute names, ``..`` components, hard links, devices and fifos, and
    symbolic links to anything but a plain name beside them (``libggml.so -> libggml.so.0``, as
    release archives hold). None for the archive's own root (``./``)."""
    what = "%s: member %r" % (os.path.basename(archive), name)
    if kind not in ("file", "folder", "symlink"):
        raise Failure("%s is a %s; only files, folders and links to a file beside them are unpacked" % (what, kind))
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise Failure("%s has an absolute name; refusing to unpack it" % what)
    if ".." in parts:
        raise Failure("%s leaves the destination folder (a '..' component); refusing to unpack it" % what)
    if kind == "symlink" and (not link or "/" in link or "\\" in link or link in (".", "..") or "\0" in link):
        raise Failure("%s is a link to %r; only links to a file beside them are unpacked" % (what, link))
    parts = [p for p in parts if p not in ("", ".")]
    return os.path.join(root, *parts) if parts else None


def _place(dest, kind, link, mode, source):
    """Write one checked member; an entry already there (an earlier member) is replaced, never written through."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    if kind == "folder":
        if os.path.lexists(dest) and not os.path.isdir(dest):
            os.remove(dest)
        os.makedirs(dest, exist_ok=True)
        return
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)
    elif os.path.lexists(dest):
        os.remove(dest)
    if kind == "symlink":
        os.symlink(link, dest)
        return
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out, source() as src:
        shutil.copyfileobj(src, out, CHUNK)
    os.chmod(dest, 0o755 if mode & 0o111 else 0o644)


def _tar_members(archive, tmp):
    with tarfile.open(archive) as tar:
        for member in tar:
            kind = ("folder" if member.isdir() else "file" if member.isreg() else "symlink" if member.issym()
                    else "hard link" if member.islnk() else "device or fifo")
            dest = member_path(tmp, archive, member.name, kind, member.linkname)
            if dest is not None:
                _place(dest, kind, member.linkname, member.mode, lambda: tar.extractfile(member))


def _zip_members(archive, tmp):
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            kind = ("folder" if info.is_dir() else "symlink" if stat.S_ISLNK(mode)
                    else "file" if mode == 0 or stat.S_ISREG(mode) else "device or fifo")
            link = zf.read(info).decode("utf-8", "replace") if kind == "symlink" else None
            dest = member_path(tmp, archive, info.filename, kind, link)
            if dest is not None:
                _place(dest, kind, link, mode, lambda: zf.open(info))


# What a download that is not an archive (or is cut short) raises while it is read.
UNREADABLE = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, gzip.BadGzipFile, EOFError, zlib.error,
              LZMAError, UnicodeError, ValueError, NotImplementedError)


def extract(archive, into):
    """Unpack an upstream archive into ``into`` (merging with what is there), dropping a single
    top-level folder (``llama-bXXXX/`` in Linux and macOS releases and in source archives). Every
    member is checked (:func:`member_path`) and written by hand, never by ``extractall``."""
    tmp = into + ".x"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        try:
            (_zip_members if archive.endswith(".zip") else _tar_members)(archive, tmp)
        except UNREADABLE as err:
            raise Failure("%s is not a readable %s archive (%s: %s); delete it and run the deploy again"
                          % (archive, "zip" if archive.endswith(".zip") else "tar", type(err).__name__, err), code=3)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-unpacked stays behind, whatever stopped it
        raise
    entries = os.listdir(tmp)
    root = os.path.join(tmp, entries[0]) if len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])) else tmp
    os.makedirs(into, exist_ok=True)
    for name in os.listdir(root):
        dest = os.path.join(into, name)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        elif os.path.lexists(dest):
            os.remove(dest)
        os.rename(os.path.join(root, name), dest)
    shutil.rmtree(tmp, ignore_errors=True)


def build_from_source(source_dir, out_dir, cmake_options, jobs):
    build_dir = source_dir + "-build"
    configure = ["cmake", "-S", source_dir, "-B", build_dir] + cmake_options
    compile_ = ["cmake", "--build", build_dir, "--config", "Release", "-j%d" % jobs, "--target"] + list(BINARIES)
    for cmd in (configure, compile_):
        sys.stderr.write("llamafleet: %s\n" % " ".join(cmd))
        if subprocess.call(cmd) != 0:
            raise Failure("source build failed: %s" % " ".join(cmd))
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(os.path.join(build_dir, "bin"), out_dir, symlinks=True)
    shutil.rmtree(build_dir, ignore_errors=True)


def check_binaries(bin_dir, spec):
    missing = [b for b in spec["binaries"] if not os.path.exists(os.path.join(bin_dir, b))]
    if missing:
        raise Failure("%s has no %s" % (spec["artifacts"][0]["file"], ", ".join(missing)))
    line = version_output(bin_dir)
    number = reported_build(line)
    pinned = int(spec["build"].lstrip("b"))
    # Source builds pass -DLLAMA_BUILD_NUMBER and release archives carry their tag, so anything
    # else (including "build 0", a tree built without git metadata) is not the pinned build.
    if number != pinned:
        raise Failure("%s reports %r but the pin is %s" % (spec["artifacts"][0]["file"], line, spec["build"]), code=3)
    return line, number


def install(spec):
    builds = os.path.join(spec["install_dir"], "builds")
    target = os.path.join(builds, spec["build_id"])
    os.makedirs(builds, exist_ok=True)
    record = read_json(os.path.join(target, "install.json")) or {}
    if spec.get("force") or record.get("artifacts_sha256") != [a["sha256"] for a in spec["artifacts"]]:
        install_into(spec, builds, target)
    if spec.get("switch", True):
        switch_current(builds, spec["build_id"])
        return "installed %s" % spec["build_id"]
    return "installed %s beside %s" % (spec["build_id"], current_build(builds))


def install_into(spec, builds, target):
    downloads = os.path.join(spec["install_dir"], "downloads")
    archives = []
    for artifact in spec["artifacts"]:
        archives.append(os.path.join(downloads, artifact["file"]))
        fetch({"url": artifact["url"], "dest": archives[-1], "sha256": artifact["sha256"], "size": artifact["size"],
               "sources": artifact.get("sources")})
    staging = os.path.join(builds, ".%s.partial" % spec["build_id"])
    shutil.rmtree(staging, ignore_errors=True)
    if spec["method"] == "source":
        source_dir = os.path.join(builds, ".%s.src" % spec["build_id"])
        extract(archives[0], source_dir)
        build_from_source(source_dir, staging, spec["cmake_options"], int(spec.get("jobs") or os.cpu_count() or 2))
        shutil.rmtree(source_dir, ignore_errors=True)
    else:
        for archive in archives:  # e.g. llama-...-cuda zip, then the cudart zip on top
            extract(archive, staging)
    line, number = check_binaries(staging, spec)
    record = {
        "build": spec["build"], "backend": spec["backend"], "method": spec["method"],
        "artifacts": [a["file"] for a in spec["artifacts"]], "artifacts_sha256": [a["sha256"] for a in spec["artifacts"]],
        "version": line, "reported_build": number, "binaries": binary_hashes(staging),
        "cmake_options": spec.get("cmake_options") or [], "installed_at": int(time.time()),
    }
    write_atomic(os.path.join(staging, "install.json"), json.dumps(record, indent=1, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def current_build(builds):
    link = os.path.join(builds, "current")
    return os.readlink(link) if os.path.islink(link) else None


ROLLBACK = ("state", "rollback.json")


def switch(spec):
    """Switch ``current`` to an installed build, first saving what a rollback needs: the build in use
    and the present content (or absence) of every file the deploy is about to rewrite."""
    builds = os.path.join(spec["install_dir"], "builds")
    previous = current_build(builds)
    if previous == spec["build_id"]:
        return "%s is already current" % previous
    if not os.path.exists(os.path.join(builds, spec["build_id"], "install.json")):
        raise Failure("%s is not installed under %s" % (spec["build_id"], builds))
    saved = {}
    for path in spec.get("files", []):
        try:
            with open(path) as f:
                saved[path] = f.read()
        except FileNotFoundError:
            saved[path] = None
    state_dir = os.path.join(spec["install_dir"], ROLLBACK[0])
    os.makedirs(state_dir, exist_ok=True)
    write_atomic(os.path.join(state_dir, ROLLBACK[1]), json.dumps(
        {"previous": previous, "build_id": spec["build_id"], "files": saved, "at": int(time.time())}), mode=0o600)
    switch_current(builds, spec["build_id"])
    return "switched %s -> %s" % (previous or "nothing", spec["build_id"])


def rollback(spec):
    """Undo the last :func:`switch`: the saved files come back (a file that did not exist is removed)
    and ``current`` points at the previous build again."""
    path = os.path.join(spec["install_dir"], *ROLLBACK)
    saved = read_json(path)
    if saved is None:
        raise Failure("nothing to roll back: %s does not exist" % path)
    for name, content in sorted(saved["files"].items()):
        if content is None:
            if os.path.lexists(name):
                os.remove(name)
        else:
            os.makedirs(os.path.dirname(name), exist_ok=True)
            write_atomic(name, content)
    builds = os.path.join(spec["install_dir"], "builds")
    if saved["previous"]:
        switch_current(builds, saved["previous"])
    os.remove(path)
    return "rolled back %s -> %s" % (saved["build_id"], saved["previous"] or "nothing")


def switch_current(builds, build_id):
    """Point ``builds/current`` at one build with an atomic rename: upgrade and rollback are a switch."""
    link = os.path.join(builds, "current")
    if os.path.islink(link) and os.readlink(link) == build_id:
        return
    tmp = link + ".new"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(build_id, tmp)
    os.replace(tmp, link)


# --- secrets -----------------------------------------------------------------------------------


def make_parents(folder):
    """Create the missing folders above a token file 0755 (owned by the deploying user, root in a
    real deploy): the service user can reach its token, and only the token file itself (0600, owned
    by the service user) holds the secret. Folders that exist are left as they are."""
    missing = []
    while folder and not os.path.lexists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # whatever the umask


def open_secret(path, user, what):
    """Open (or create, 0600) the secret file ``path`` for writing, refusing what a secret must never
    be written through: every open is O_NOFOLLOW, so a symbolic link in its place is refused (never
    written, chmod'ed or chown'ed through), as is a file that is not regular or has another hard link.
    Returns (descriptor, the user's pwd entry, "created" or "kept")."""
    import pwd

    if not os.path.isabs(path):
        raise Failure("%s path %r is not absolute" % (what, path))
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise Failure("no user %r on this host to own the %s file %s" % (user, what, path))
    make_parents(os.path.dirname(path))
    nofollow = os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # O_NONBLOCK: a fifo put there does not hang us
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
        result = "created"
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR | nofollow)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise Failure("%s file %s is a symbolic link; refusing to write, chmod or chown through it "
                              "(remove the link, the deploy then creates the file)" % (what, path))
            raise Failure("cannot open %s file %s: %s" % (what, path, err.strerror))
        result = "kept"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Failure("%s file %s is not a regular file; refusing to use it" % (what, path))
        if st.st_nlink != 1:
            raise Failure("%s file %s has %d hard links; refusing to chmod or chown a file shared with "
                          "another path" % (what, path, st.st_nlink))
    except Failure:
        os.close(fd)
        raise
    return fd, entry, result


def own_secret(fd, entry):
    """Mode 0600 and the service user as owner, through the open descriptor; True if it changed."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid):
        return False
    os.fchmod(fd, 0o600)
    os.fchown(fd, entry.pw_uid, entry.pw_gid)
    return True


def make_token(path, user):
    """Create a random token file (0600, owned by ``user``) if missing, or repair the mode and owner of
    the one there (through :func:`open_secret`'s descriptor)."""
    import secrets

    fd, entry, result = open_secret(path, user, "token")
    try:
        if os.fstat(fd).st_size == 0:  # created but never written (an interrupted earlier run)
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
            result = "created" if result == "created" else "filled"
        if own_secret(fd, entry):
            result = "created" if result == "created" else "repaired"
    finally:
        os.close(fd)
    return result


def put_secret(path, user, upload):
    """Write the secret the deploy uploaded to ``upload`` (a file in a 0700 folder) into ``path``
    (0600, owned by ``user``; refused like a token path by :func:`open_secret`) and remove the upload.
    The secret is read from files only, never from the command line."""
    try:
        fd = os.open(upload, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise Failure("cannot read the uploaded secret %s: %s" % (upload, err.strerror))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Failure("the uploaded secret %s is not a regular file" % upload)
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
        os.unlink(upload)
    if not data.strip():
        raise Failure("the uploaded secret for %s is empty" % path)
    fd, entry, result = open_secret(path, user, "secret")
    try:
        current = os.read(fd, len(data) + 1)
        if current != data:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
            os.fsync(fd)
            result = "created" if result == "created" else "replaced"
        if own_secret(fd, entry) and result == "kept":
            result = "repaired"
    finally:
        os.close(fd)
    return result


def own_folder(path, user):
    """Create the folder ``path`` (0700, owned by ``user``) if missing, or repair its mode and owner,
    through a descriptor opened O_NOFOLLOW | O_DIRECTORY: a link or a file in its place is refused,
    never chmod'ed or chown'ed through. Its parent (the install dir) is made as token parents are."""
    import pwd

    if not os.path.isabs(path):
        raise Failure("folder path %r is not absolute" % path)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise Failure("no user %r on this host to own the folder %s" % (user, path))
    make_parents(os.path.dirname(path))
    result = "kept"
    try:
        os.mkdir(path, 0o700)
        result = "created"
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise Failure("%s is a symbolic link or not a folder; refusing to use it (remove it, the deploy then "
                      "creates the folder): %s" % (path, err.strerror))
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != 0o700 or (st.st_uid, st.st_gid) != (entry.pw_uid, entry.pw_gid):
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
            os.fchmod(fd, 0o700)
            result = "created" if result == "created" else "repaired"
    finally:
        os.close(fd)
    return result


# --- readiness ---------------------------------------------------------------------------------


def http_ok(url, cafile=None):
    """``cafile``: a TLS proxy's own certificate, the only one trusted (whatever address it is probed on)."""
    context = None
    if cafile:
        import ssl

        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
        context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000)
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, socket.timeout):
        return False


def http_json(url, body=None, timeout=5, key=None):
    """(status, JSON body or None); status 0 when nothing answered. ``key``: the server's API key."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if key:
        headers["Authorization"] = "Bearer " + key
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read().decode() or "null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, OSError, socket.timeout, ValueError):
        return 0, None


def listen_key(endpoint):
    """``addr:port`` as listening_ports() writes it (no IPv6 brackets)."""
    host, port = endpoint.rsplit(":", 1)
    return "%s:%s" % (host.strip("[]"), port)


# supervisord states from which a program does not come up by itself (startretries exhausted)
GAVE_UP = ("FATAL",)


def props_build(base, build, key=None):
    """None when ``base``/props reports build ``build`` ("b8942-f535774"), else what it reports."""
    status, body = http_json(base + "/props", key=key)
    info = str((body or {}).get("build_info", "")) if status == 200 else "HTTP %d" % status
    return None if info.startswith("b%d-" % build) else info


def completes(base, key=None):
    """One short completion: the model loaded, and (for a target) its draft device answers."""
    status, body = http_json(base + "/completion", {"prompt": "Hello", "n_predict": 2, "temperature": 0,
                                                     "cache_prompt": False}, timeout=120, key=key)
    return status == 200 and isinstance(body, dict) and "content" in body


def read_key(path):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError as err:
        raise Failure("cannot read the servers' API key file %s: %s" % (path, err.strerror))


def wait(spec):
    """Wait until every service is ready: /health for HTTP services and a listening socket for RPC
    workers; under supervisord, every program RUNNING; then, when the spec asks, each llama-server's
    /props reports the expected build and answers one short completion. A program that supervisord
    gave up on fails the wait at once."""
    deadline = time.monotonic() + float(spec.get("timeout", 300))
    supervised = spec.get("supervisord") or {}
    pending = ([("http", u) for u in spec.get("http", [])] + [("tcp", e) for e in spec.get("tcp", [])]
               + [("supervisord", p) for p in supervised.get("programs", [])])

    def ready(kind, target, listening, programs):
        if kind == "http":
            return http_ok(target, spec.get("cafiles", {}).get(target))
        if kind == "tcp":
            # LISTEN state, not a connect: ggml-rpc-server serves one client at a time, so while
            # its target holds it (and earlier probes fill its queue) a connect hangs.
            return listen_key(target) in listening
        return programs.get(target) == "RUNNING"

    while pending and time.monotonic() < deadline:
        kinds = {kind for kind, _ in pending}
        # One read of the socket table and of supervisord per poll, whatever the number of services.
        listening = set(listening_ports()) if "tcp" in kinds else set()
        programs = supervisor_state(supervised["conf"])["programs"] if supervised else {}
        gave_up = sorted(p for p in supervised.get("programs", []) if programs.get(p) in GAVE_UP)
        if gave_up:
            raise Failure("%s exited and supervisord gave up restarting it (see %s)"
                          % (", ".join(gave_up), ", ".join(os.path.join(spec.get("logs", ""), p + ".log") for p in gave_up)))
        pending = [(kind, t) for kind, t in pending if not ready(kind, t, listening, programs)]
        if pending:
            time.sleep(1)
    if pending:
        raise Failure("not answering after %ss: %s (see the service logs under %s)"
                      % (spec.get("timeout", 300), ", ".join(t for _, t in pending), spec.get("logs", "the install dir")))
    # The servers' API key (/health is public, /props and /completion are not), read from its file.
    key = read_key(spec["key_file"]) if spec.get("key_file") else None
    for base, build in sorted((spec.get("props") or {}).items()):
        wrong = props_build(base, build, key)
        if wrong is not None:
            raise Failure("%s/props reports build_info %r, not build b%d" % (base, wrong, build), code=3)
    for base in spec.get("completion", []):
        if not completes(base, key):
            raise Failure("%s/completion did not answer a 2-token completion" % base, code=3)
    return "all services answer"


# --- the cluster's file cache -------------------------------------------------------------------


CACHED = re.compile(r"^/([0-9a-f]{64})/([^/]+)$")


def cached_file(folders, path):
    """The file ``GET /<sha256>/<name>`` may send, or None: a regular file (never a link) at
    ``<folder>/<sha256>/<name>`` (the cache's layout) or ``<folder>/<name>`` (a host's models and
    downloads) whose verified stamp says it has that sha256 and is unchanged since."""
    match = CACHED.match(urllib.parse.unquote(path.split("?", 1)[0]))
    if not match or match.group(2).startswith(".") or "\\" in match.group(2):
        return None
    sha256, name = match.groups()
    for folder in folders:
        for candidate in (os.path.join(folder, sha256, name), os.path.join(folder, name)):
            try:
                if stat.S_ISREG(os.lstat(candidate).st_mode) and is_verified(candidate, sha256):
                    return candidate
            except OSError:
                continue
    return None


def serve(bind, port, folders):
    """Serve the verified files of ``folders``, read-only, on ``bind:port`` only: ``GET``/``HEAD``
    ``/<sha256>/<name>`` (with ``Range: bytes=N-`` and ``bytes=N-M``) and ``/health``; anything else
    is 404 (or 501 for other methods). Runs in the foreground under the host's service manager."""
    import http.server

    folders = [os.path.abspath(folder) for folder in folders]

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "llamafleet-cache"
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - one line per request in the service log
            sys.stderr.write("llamafleet-cache: %s %s\n" % (self.address_string(), format % args))

        def do_HEAD(self):
            self.answer(body=False)

        def do_GET(self):
            self.answer(body=True)

        def answer(self, body):
            if self.path == "/health":
                return self.reply(200, b"ok\n", body)
            path = cached_file(folders, self.path)
            if path is None:
                return self.reply(404, b"not in the cache\n", body)
            size = os.path.getsize(path)
            start, end = 0, size - 1
            wanted = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
            if wanted:
                start = int(wanted.group(1))
                end = min(int(wanted.group(2)), size - 1) if wanted.group(2) else size - 1
                if start >= size or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", "bytes */%d" % size)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not body:
                return
            with open(path, "rb") as f:
                f.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    block = f.read(min(CHUNK, remaining))
                    if not block:
                        break
                    self.wfile.write(block)
                    remaining -= len(block)

        def reply(self, code, text, body):
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if body:
                self.wfile.write(text)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

    try:
        server = Server((bind, int(port)), Handler)
    except (OSError, ValueError) as err:
        raise Failure("cannot serve the cache on %s port %s: %s" % (bind, port, err))
    sys.stderr.write("llamafleet-cache: serving %s on %s port %s\n" % (", ".join(folders), bind, port))
    sys.stderr.flush()
    server.serve_forever()


# --- state -------------------------------------------------------------------------------------


def file_state(path):
    """sha256, mode and owner of a file the deploy writes; mode and owner are the path's own (lstat),
    so a symbolic link put in a file's place reads as a link (0777), not as its target."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    try:
        import pwd

        owner = pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        owner = str(st.st_uid)
    return {"sha256": sha256_file(path) if stat.S_ISREG(st.st_mode) else None,
            "mode": "%04o" % (st.st_mode & 0o7777), "owner": owner}


def folder_state(path):
    """Mode and owner of a folder the deploy makes (lstat: a link in its place reads as a link);
    None when nothing is there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    kind = "folder" if stat.S_ISDIR(st.st_mode) else ("link" if stat.S_ISLNK(st.st_mode) else "other")
    found = file_state(path)
    return {"kind": kind, "mode": found["mode"], "owner": found["owner"]} if found else None


def model_state(path, sha256):
    partial = os.path.join(os.path.dirname(path), ".%s.partial" % os.path.basename(path))
    try:
        st = os.stat(path)
        present = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        present = None
    return {"present": present, "verified": is_verified(path, sha256),
            "partial_size": os.path.getsize(partial) if os.path.exists(partial) else 0}


def install_state(install_dir):
    builds = os.path.join(install_dir, "builds")
    current = os.path.join(builds, "current")
    current_id = os.readlink(current) if os.path.islink(current) else None
    listed = sorted(d for d in os.listdir(builds) if not d.startswith(".") and d != "current") if os.path.isdir(builds) else []
    state = {"current": current_id, "builds": listed, "record": None, "version": None, "binaries": {},
             # what each installed folder was installed from: a switch to one of them downloads nothing
             "installed": {b: (read_json(os.path.join(builds, b, "install.json")) or {}).get("artifacts_sha256")
                           for b in listed}}
    if current_id:
        bin_dir = os.path.join(builds, current_id)
        state.update(record=read_json(os.path.join(bin_dir, "install.json")),
                     version=version_output(bin_dir), binaries=binary_hashes(bin_dir))
    return state


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        http.client.HTTPConnection.__init__(self, "localhost")
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.socket_path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        xmlrpc.client.Transport.__init__(self)
        self.socket_path = path

    def make_connection(self, host):
        return UnixHTTPConnection(self.socket_path)


def supervisor_state(conf):
    """llamafleet's supervisord (pid file and socket beside its conf, as rendered): asked over its
    XML-RPC socket directly, which is much cheaper than starting supervisorctl."""
    folder = os.path.dirname(conf)
    try:
        pid = int(open(os.path.join(folder, "supervisord.pid")).read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        pid = None
    programs = {}
    if pid:
        server = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(os.path.join(folder, "supervisor.sock")))
        try:
            programs = {p["name"]: p["statename"] for p in server.supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error):
            pid = None
    conf_d = os.path.join(folder, "conf.d")
    configs = sorted(n[:-5] for n in os.listdir(conf_d) if n.endswith(".conf")) if os.path.isdir(conf_d) else []
    return {"running": pid is not None, "pid": pid, "programs": programs, "configs": configs}


def unit_states(kind, names):
    if not names:
        return {}
    if kind == "systemd":
        proc = subprocess.run(["systemctl", "is-active"] + names, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return dict(zip(names, proc.stdout.decode().split()))
    proc = subprocess.run(["launchctl", "list"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    loaded = {}
    for line in proc.stdout.decode(errors="replace").splitlines()[1:]:
        pid, _status, label = (line.split("\t") + ["", "", ""])[:3]
        loaded[label] = "running" if pid.strip().isdigit() else "loaded"
    return {name: loaded.get(name, "not-loaded") for name in names}


def listening_ports():
    """Listening TCP sockets as ``addr:port`` strings: /proc on Linux, lsof elsewhere."""
    found = set()
    if os.path.exists("/proc/net/tcp"):
        for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
            if not os.path.exists(table):
                continue
            for line in open(table).read().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                found.add("%s:%d" % (decode_addr(hex_addr, width), int(hex_port, 16)))
    else:
        proc = subprocess.run(["lsof", "-nP", "-iTCP", "-sTCP:LISTEN", "-Fn"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        found.update(line[1:] for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith("n"))
    return sorted(found)


def decode_addr(hex_addr, width):
    raw = bytes.fromhex(hex_addr)
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


DRIVER_TOOLS = {
    "nvidia": [["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]],
    "rocm": [["amd-smi", "version", "--json"], ["cat", "/opt/rocm/.info/version"]],
    "macos": [["sw_vers"]],
}


def tool_output(argv):
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def driver_outputs(kinds):
    """Raw tool outputs, keyed by tool; the controller parses them with tested parsers."""
    return {argv[-1] if argv[0] == "cat" else argv[0]: tool_output(argv)
            for kind in kinds for argv in DRIVER_TOOLS[kind]}


def os_release():
    fields = {}
    for line in open("/etc/os-release").read().splitlines() if os.path.exists("/etc/os-release") else []:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key] = value.strip('"')
    return {k: fields.get(k) for k in ("ID", "ID_LIKE", "VERSION_ID", "VERSION_CODENAME")}


def state(spec):
    models_dir = spec["models_dir"]
    probe = models_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    services = {}
    if spec.get("supervisor_conf"):
        services["supervisord"] = supervisor_state(spec["supervisor_conf"])
    for kind in ("systemd", "launchd"):
        if spec.get(kind):
            services[kind] = unit_states(kind, spec[kind])
    return {
        "schema": 1,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "install": install_state(spec["install_dir"]),
        "models": {m["path"]: model_state(m["path"], m["sha256"]) for m in spec.get("models", [])},
        "cache": {m["path"]: model_state(m["path"], m["sha256"]) for m in spec.get("cache", [])},
        "files": {path: file_state(path) for path in spec.get("files", [])},
        "folders": {path: folder_state(path) for path in spec.get("folders", [])},
        "services": services,
        "listening": listening_ports(),
        "disk_free": shutil.disk_usage(probe).free,
        "drivers": driver_outputs(spec.get("drivers", [])),
        "driver_pending": read_json(os.path.join(spec["install_dir"], "state", "driver-pending.json")),
        "os_release": os_release(),
        "tools": {t: shutil.which(t) for t in ("supervisord", "systemctl", "launchctl")},
    }


COMMANDS = {"state": state, "fetch": fetch, "install": install, "switch": switch, "rollback": rollback, "wait": wait}


def main(argv):
    try:
        if argv[:1] == ["token"] and len(argv) == 3:
            print(make_token(argv[1], argv[2]))
        elif argv[:1] == ["secret"] and len(argv) == 4:
            print(put_secret(argv[1], argv[2], argv[3]))
        elif argv[:1] == ["folder"] and len(argv) == 3:
            print(own_folder(argv[1], argv[2]))
        elif argv[:1] == ["serve"] and len(argv) >= 4:
            serve(argv[1], argv[2], argv[3:])
        elif len(argv) == 2 and argv[0] in COMMANDS:
            result = COMMANDS[argv[0]](json.loads(argv[1]))
            print(json.dumps(result, sort_keys=True) if argv[0] == "state" else "llamafleet: %s" % result)
        else:
            raise Failure("usage: lf_host.py state|fetch|install|switch|rollback|wait SPEC_JSON | token PATH USER"
                          " | secret PATH USER UPLOAD | folder PATH USER"
                          " | serve ADDRESS PORT FOLDER...")
    except Failure as err:
        return fail(str(err), err.code)
    except KeyError as err:
        return fail("%s: the spec has no %s" % (argv[0], err))
    except Exception as err:  # noqa: BLE001 - whatever it was, one line for pyinfra, never a traceback
        return fail("%s failed: %s: %s" % (argv[0], type(err).__name__, err))
    return 0


def fail(message, code=2):
    """Every failure is one line on stderr (a multi-line exception text is joined) and a non-zero exit."""
    sys.stderr.write("llamafleet: %s\n" % " ".join(line.strip() for line in message.splitlines()))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
