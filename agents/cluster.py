"""Starting Ray for a search or a sweep, or joining a cluster, token authentication included.

``ray start --head`` turns Ray's token authentication on whenever a token exists on the head machine
(``~/.ray/auth_token``, which ``ray get-auth-token --generate`` or any local ``ray.init()`` writes), but a
driver that joins by an explicit ``HOST:PORT`` sends a token only when ``RAY_AUTH_MODE=token`` is set.
:func:`init_ray` asks the cluster first (one request to its GCS) and joins in the mode it uses: with
the token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` when the cluster
wants one, without when it does not (a driver that sends a token to a cluster without authentication
connects, but its workers cannot call back). When there is no token here, or not the cluster's, it
raises :class:`amc.errors.ConfigError` that says what to set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from agents.parallel import local_cpus, require_ray
from amc.errors import ConfigError, first_line

log = logging.getLogger(__name__)

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_HELP = (
    "run `ray get-auth-token` on the head node and set RAY_AUTH_TOKEN=<that token> here "
    "(or copy the head's ~/.ray/auth_token to ~/.ray/auth_token on this machine, or point RAY_AUTH_TOKEN_PATH at a copy)"
)


def init_ray(address: str | None) -> bool:
    """Joins the cluster at ``address`` (``auto`` or HOST:PORT) or starts Ray locally; True if started here.

    Nothing happens when Ray is already initialized in this process (False).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    if not address:
        # a local instance: Ray's notes on its token authentication and on starting up concern nobody here
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(
            address="local",
            num_cpus=local_cpus(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        return True
    if _explicit(address) and AUTH_MODE not in os.environ and _wants_token(address):
        _use_token(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        raise ConfigError(
            f"could not join the Ray cluster at {address} ({first_line(exc)}); check the address (`ray start --head` "
            f"prints it) and, if the cluster uses token authentication, set {AUTH_MODE}=token and the token: {TOKEN_HELP}"
        ) from exc
    return True


def token_source() -> str | None:
    """Where Ray would read an authentication token from on this machine (None: nowhere)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" if _non_empty(Path(path)) else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if _non_empty(default) else None


def _explicit(address: str) -> bool:
    """A HOST:PORT address of a GCS (``auto`` already follows the token on this machine; ``ray://`` is Ray Client)."""
    return address not in ("auto", "local") and "://" not in address


def _non_empty(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def _wants_token(address: str) -> bool:
    """True if the GCS at ``address`` refuses this process's credentials (none, unless in token mode)."""
    ray = require_ray()
    try:
        from ray._raylet import GcsClient
    except ImportError:  # pragma: no cover - a Ray without the client; ray.init reports any problem itself
        return False
    try:
        with _quiet_stderr():  # the GCS client logs every refused request before it raises
            GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        return True
    except ray.exceptions.RpcError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({first_line(exc)}); start one with "
            "`ray start --head --port=PORT` and pass the address it prints"
        ) from exc
    except Exception as exc:  # only a probe: ray.init reports any real problem
        log.debug("could not ask %s about token authentication: %s", address, exc)
        return False
    return False


def _use_token(address: str) -> None:
    """Switches this process to token mode (as ``ray.init()`` does for a local cluster) and checks the token."""
    source = token_source()
    if source is None:
        raise ConfigError(
            f"the Ray cluster at {address} uses token authentication and there is no token here: {TOKEN_HELP}"
        )
    from ray._raylet import Config

    os.environ[AUTH_MODE] = "token"
    Config.initialize("")  # the C++ side caches the mode; Ray re-reads it the same way when it turns token mode on
    if _wants_token(address):
        raise ConfigError(f"the Ray cluster at {address} does not accept the token from {source}: {TOKEN_HELP}")
    log.info("the Ray cluster at %s uses token authentication; joining with the token from %s", address, source)


@contextlib.contextmanager
def _quiet_stderr():
    """Sends file descriptor 2, where Ray's C++ side logs, to /dev/null for the duration."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


__all__ = ["init_ray", "token_source"]
