"""Whether this machine can run a loaded gateway config: what ``plantsync-edge run``
needs beyond a well-formed file, checked the same way by ``validate`` and by ``run`` (and
by a SIGHUP reload), so that validate refuses exactly what run would refuse, with the
same lines.

- ``cloud.token_file`` can be read and is not empty (the uplinks read it);
- ``gateway.data_dir`` is a directory this user may write, or can be created (the daemon
  creates it, parents included).

These look at the machine, not the file, so they run once the file itself is valid
(``load_runnable``); a file's own problems come first and all together. Neither check
changes anything on disk. Paths are relative to the config file's folder, as the daemon
reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.config.loading import LoadedGateway, load_gateway
from edge.config.problems import ConfigError, Problem, display_path

__all__ = ["load_runnable", "run_problems"]


def _token_problem(loaded: LoadedGateway, shown: str) -> Problem | None:
    cloud = loaded.config.cloud
    path = loaded.path.parent / cloud.token_file
    fix = (f"write the token from `plantsync-cloud admin create-gateway "
           f"{loaded.config.gateway.id}` there, readable by the user the gateway runs as")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except IsADirectoryError:
        return Problem(shown, "cloud.token_file", f"{display_path(path)} is a directory, "
                       "not a token file", fix)
    except OSError as exc:
        return Problem(shown, "cloud.token_file",
                       f"cannot read {display_path(path)} ({exc.strerror})", fix)
    except UnicodeDecodeError:
        return Problem(shown, "cloud.token_file", f"{display_path(path)} is not text", fix)
    if not token:
        return Problem(shown, "cloud.token_file", f"{display_path(path)} is empty", fix)
    return None


def _data_dir_problem(loaded: LoadedGateway, shown: str) -> Problem | None:
    configured = loaded.config.gateway.data_dir
    path = loaded.path.parent / configured
    fix = "point data_dir at a directory the gateway's user may write"
    if path.exists():
        if not path.is_dir():
            return Problem(shown, "gateway.data_dir",
                           f"{display_path(path)} is a file, not a directory", fix)
        if not os.access(path, os.W_OK | os.X_OK):
            return Problem(shown, "gateway.data_dir",
                           f"{display_path(path)} is not writable by this user "
                           f"(uid {os.geteuid()})", fix)
        return None
    # The daemon creates it with its parents: the nearest existing one must let it.
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return Problem(shown, "gateway.data_dir",
                       f"{display_path(path)} cannot be created: {display_path(parent)} "
                       "is a file", fix)
    if not os.access(parent, os.W_OK | os.X_OK):
        return Problem(shown, "gateway.data_dir",
                       f"{display_path(path)} cannot be created: {display_path(parent)} is "
                       f"not writable by this user (uid {os.geteuid()})",
                       f"create it for the gateway's user, or {fix}")
    return None


def run_problems(loaded: LoadedGateway) -> list[Problem]:
    """What stops this machine from running ``loaded`` (empty when nothing does)."""
    shown = display_path(loaded.path)
    found = (_token_problem(loaded, shown), _data_dir_problem(loaded, shown))
    return [p for p in found if p is not None]


def load_runnable(path: str | os.PathLike[str]) -> LoadedGateway:
    """``load_gateway``, then ``run_problems``: what ``validate`` and ``run`` both use.
    Raises ConfigError with the file's problems, else with the machine's."""
    loaded = load_gateway(Path(path))
    problems = run_problems(loaded)
    if problems:
        raise ConfigError(problems)
    return loaded
