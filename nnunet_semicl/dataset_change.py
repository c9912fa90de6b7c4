"""Changes to a dataset that survive SIGKILL at any instant, one command at a time.

Every command that changes a dataset (``add-unlabeled``, ``split``, ``convert-acdc``/``convert-la``,
``tiny-config``, ``sync-plans``) runs inside a :class:`DatasetChange`::

    with DatasetChange(dataset_name, preprocessed_root, [raw_root], command=...) as change:
        if change.resumed:      # this very command was interrupted and has just been completed
            return
        path = change.stage(final_path)   # write the new file (or folder) there
        change.remove(final_path)         # delete it when the change commits
        save_json(obj, final_path)        # staged automatically while the change is open

1. **Lock.** ``<preprocessed_root>/.semicl_lock_<Dataset>`` is locked with ``flock`` (the kernel releases it
   when its holder dies, even by SIGKILL) and holds the holder's pid, host and command. A second command waits
   up to ``$NNUNET_SEMICL_LOCK_WAIT`` seconds (default 10), then refuses, naming the file and the holder. A
   file left by a dead process is a stale lock and is taken over (with a note).
2. **Staging.** New files are written into ``<root>/.semicl_change_<Dataset>/`` (one per root, so that the
   final renames stay on one file system); nothing in the dataset changes.
3. **Journal.** ``journal.json`` in the preprocessed root's staging folder lists the renames and removals;
   it is written atomically. Before it exists the change is undone by deleting the staging folders; once it
   exists the change is completed by (re)applying the renames, each of which is idempotent.
4. **Apply** the renames, delete the journal, then the staging folders; release the lock.

A command that finds a staging folder or journal (under the lock) completes or undoes that change first
and says which. ``$NNUNET_SEMICL_KILL_AT`` (a kill-point name, or N for the N-th kill point reached) makes
the process SIGKILL itself there: the tests' way to interrupt a command at every step.

No torch or nnU-Net import.
"""
import fcntl
import json
import os
import shutil
import signal
import socket
import time
from typing import List, Optional, Sequence

from nnunet_semicl import files
from nnunet_semicl.errors import InputError
from nnunet_semicl.files import _pid_alive, load_json, save_json

LOCK_WAIT_ENV = "NNUNET_SEMICL_LOCK_WAIT"
KILL_ENV = "NNUNET_SEMICL_KILL_AT"
LOCK_PREFIX = ".semicl_lock_"
STAGING_PREFIX = ".semicl_change_"
JOURNAL = "journal.json"
DONE = "done.json"
COMMAND_FILE = "command.txt"
_kill_count = 0


class DatasetBusyError(InputError):
    """Another command holds the dataset's lock."""


def kill_point(name: str) -> None:
    """SIGKILL this process here if ``$NNUNET_SEMICL_KILL_AT`` names this point (or this is the N-th point)."""
    global _kill_count
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    _kill_count += 1
    if spec == name or (spec.isdigit() and int(spec) == _kill_count):
        os.kill(os.getpid(), signal.SIGKILL)


class DatasetLock:
    """``flock`` on ``<root>/.semicl_lock_<dataset>``, with the holder's pid, host and command inside."""

    def __init__(self, root: str, dataset_name: str):
        self.path = os.path.join(root, LOCK_PREFIX + dataset_name)
        self.dataset_name = dataset_name
        self.fd: Optional[int] = None

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except (ValueError, OSError):
            return {}

    def acquire(self, command: str, wait: Optional[float] = None, verbose: bool = True) -> None:
        if wait is None:
            try:
                wait = float(os.environ.get(LOCK_WAIT_ENV, "10"))
            except ValueError:
                wait = 10.0
        deadline = time.time() + wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                if time.time() < deadline:
                    time.sleep(0.2)
                    continue
                raise DatasetBusyError(
                    f"{self.dataset_name} is being changed by another command: its lock file {self.path} is held by "
                    f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
                    f"since {holder.get('since', '?')}). Run this command again when that one has finished (the lock "
                    f"is released when its holder exits or dies).") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino  # not a file its holder just removed
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = self._holder(fd)
            if old and verbose:
                alive = old.get("host") == socket.gethostname() and _pid_alive(int(old.get("pid", 0) or 0))
                print(f"Took over the stale lock {self.path} of pid {old.get('pid')} on {old.get('host')} "
                      f"({old.get('command')}){'' if alive else ', which no longer runs'}.", flush=True)
            text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                               "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still locked: a waiting process then retries on a new file
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def apply_journal(journal: str) -> dict:
    """Apply (or re-apply: every step is idempotent) the renames of ``journal``; then remove it and the staging."""
    j = load_json(journal)
    for op in j["ops"]:
        dst, trash = op["dst"], op["trash"]
        if op["op"] == "put":
            if not os.path.lexists(op["src"]):
                continue                                   # done before the interruption
            if os.path.isdir(dst) and not os.path.islink(dst):
                if os.path.lexists(trash):
                    shutil.rmtree(dst)
                else:
                    os.rename(dst, trash)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(op["src"], dst)
        elif os.path.lexists(dst):
            if os.path.lexists(trash):
                shutil.rmtree(trash) if os.path.isdir(trash) else os.remove(trash)
            os.rename(dst, trash)
        kill_point("move")
    done = os.path.join(os.path.dirname(journal), DONE)
    os.replace(journal, done)            # complete: only the staging folders' removal is left
    kill_point("applied")
    finish_cleanup(done, j)
    return j


def finish_cleanup(done: str, j: dict) -> None:
    """Remove the staging folders of an applied change, its ``done.json`` marker last."""
    main = os.path.dirname(done)
    for d in j["staging"]:
        if d != main:
            shutil.rmtree(d, ignore_errors=True)
    for x in os.listdir(main):
        if x != DONE:
            p = os.path.join(main, x)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    kill_point("cleaned")
    os.remove(done)
    os.rmdir(main)


class DatasetChange:
    """Lock, recovery, staging and journal of one dataset-changing command (see the module docstring)."""

    def __init__(self, dataset_name: str, preprocessed_root: str, other_roots: Sequence[str] = (),
                 command: str = "", verbose: bool = True):
        roots = [os.path.abspath(preprocessed_root)]
        roots += [os.path.abspath(r) for r in other_roots if os.path.abspath(r) not in roots]
        self.dataset_name, self.roots, self.command, self.verbose = dataset_name, roots, command, verbose
        self.lock = DatasetLock(roots[0], dataset_name)
        self.staging = {r: os.path.join(r, STAGING_PREFIX + dataset_name) for r in roots}
        self.journal = os.path.join(self.staging[roots[0]], JOURNAL)
        self.ops: List[dict] = []
        self._staged = {}
        self.resumed = False
        self.recovered: Optional[str] = None

    # ---------------------------------------------------------------- entering: lock, recover, staging
    def __enter__(self) -> "DatasetChange":
        for r in self.roots:
            os.makedirs(r, exist_ok=True)
        self.lock.acquire(self.command, verbose=self.verbose)
        try:
            self.recovered, interrupted = self._recover()
            self.resumed = self.recovered == "completed" and interrupted == self.command
            for d in self.staging.values():
                os.makedirs(d)
            with open(os.path.join(self.staging[self.roots[0]], COMMAND_FILE), "w") as f:
                f.write(self.command)
        except BaseException:
            self.lock.release()
            raise
        files.set_stager(self._save_path, self.remove, self._read_path)
        return self

    def _recover(self):
        main = self.staging[self.roots[0]]
        interrupted = None
        if os.path.isfile(os.path.join(main, COMMAND_FILE)):
            with open(os.path.join(main, COMMAND_FILE)) as f:
                interrupted = f.read()
        done = os.path.join(main, DONE)
        if os.path.isfile(self.journal) or os.path.isfile(done):
            if os.path.isfile(self.journal):
                j = apply_journal(self.journal)
            else:
                j = load_json(done)
                finish_cleanup(done, j)
            self._say(f"Found the journal of an interrupted command on {self.dataset_name} ({j['command']}): "
                      f"COMPLETED it ({len(j['ops'])} file operations).")
            return "completed", j["command"]
        found = [d for d in self.staging.values() if os.path.lexists(d)]
        staged_files = any(f for d in found for _, _, f in os.walk(d))
        for d in found:
            shutil.rmtree(d)
        if staged_files:  # (empty folders: nothing was staged, nothing to complete or undo)
            self._say(f"Found the staging folder(s) of an interrupted command on {self.dataset_name} "
                      f"({interrupted or 'unknown command'}): UNDID it (removed {', '.join(found)}; the dataset "
                      f"was not changed by it).")
            return "undone", interrupted
        return None, None

    @staticmethod
    def _say(msg: str) -> None:
        print(msg, flush=True)  # (even with -q: a completed or undone earlier command must be known)

    # ---------------------------------------------------------------- while open
    def _root_of(self, path: str) -> Optional[str]:
        path = os.path.abspath(path)
        for r in self.roots:
            if os.path.commonpath([r, path]) == r and path != r:
                return r
        return None

    def _in_staging(self, path: str) -> bool:
        path = os.path.abspath(path)
        return any(os.path.commonpath([d, path]) == d for d in self.staging.values())

    def stage(self, final_path: str, folder: bool = False) -> str:
        """Where to write what becomes ``final_path`` (a file, or a folder with ``folder``) when the change commits."""
        final_path = os.path.abspath(final_path)
        if final_path in self._staged:
            return self._staged[final_path]
        root = self._root_of(final_path)
        if root is None:
            raise ValueError(f"{final_path} is outside the roots {self.roots} of this change")
        kill_point("stage")
        i = len(self.ops)
        src = os.path.join(self.staging[root], f"{i:04d}_{os.path.basename(final_path)}")
        if folder:
            os.makedirs(src)
        self.ops.append({"op": "put", "src": src, "dst": final_path,
                         "trash": os.path.join(self.staging[root], f"trash_{i:04d}")})
        self._staged[final_path] = src
        return src

    def scratch(self, name: str) -> str:
        """A folder for intermediate files, removed with the staging folders (never moved into the dataset)."""
        path = os.path.join(self.staging[self.roots[0]], "scratch_" + name)
        os.makedirs(path, exist_ok=True)
        return path

    def remove(self, final_path: str) -> None:
        """Remove ``final_path`` (file or folder) when the change commits."""
        final_path = os.path.abspath(final_path)
        root = self._root_of(final_path)
        if root is None:
            raise ValueError(f"{final_path} is outside the roots {self.roots} of this change")
        i = len(self.ops)
        self.ops.append({"op": "remove", "src": None, "dst": final_path,
                         "trash": os.path.join(self.staging[root], f"trash_{i:04d}")})

    def _read_path(self, path: str) -> str:
        """``load_json``'s source while the change is open: the staged version of a file written earlier."""
        return self._staged.get(os.path.abspath(path), path)

    def _save_path(self, path: str) -> str:
        """``save_json``'s target while the change is open: staged if it lies in one of the dataset's folders."""
        p = os.path.abspath(path)
        if self._in_staging(p) or not any(os.path.commonpath([os.path.join(r, self.dataset_name), p]) ==
                                          os.path.join(r, self.dataset_name) for r in self.roots):
            return path
        return self.stage(p)

    # ---------------------------------------------------------------- leaving: commit or discard
    def __exit__(self, exc_type, exc, tb):
        files.set_stager(None, None, None)
        try:
            if exc_type is None:
                kill_point("staged")
                save_json({"command": self.command, "ops": self.ops, "staging": list(self.staging.values())},
                          self.journal)
                kill_point("journal")
                apply_journal(self.journal)
            else:
                for d in self.staging.values():
                    shutil.rmtree(d, ignore_errors=True)
        finally:
            self.lock.release()
        return False
