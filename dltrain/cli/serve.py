"""dltrain serve MODEL... [--host H] [--port P] [--max-batch-size B] [--max-delay-ms T] [--workers N]
[--token-file FILE | --no-auth] [--max-body-mb M] [--device D] [--tta VIEW ... | --no-tta]"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from pathlib import Path

import typer

from ..limits import DEFAULT_MAX_IMAGE_PIXELS
from .options import CODE_OPTION, NO_TTA_OPTION, TTA_OPTION, chosen_views

SETTINGS_VARIABLE = "DLTRAIN_SERVE"  # what each of several worker processes is to serve (JSON)


def serve(
    models: list[Path] = typer.Argument(..., help="Run directories (their best checkpoints), checkpoints or exported "
                                                  ".onnx files, each served under its name (the run directory's, or "
                                                  "the file's without its suffix).", metavar="MODEL"),
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST",
                             help="Address to listen on; anything but this machine's own "
                                  "(127.0.0.1, ::1, localhost) needs --token-file or "
                                  "--no-auth."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, metavar="PORT", help="TCP port (0: any free one)."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", min=1, metavar="N",
                                       help="Samples of concurrent requests gathered into one forward pass (1: "
                                            "each request alone)."),
    max_delay_ms: float = typer.Option(0.0, "--max-delay-ms", min=0.0, metavar="MS",
                                       help="How long a request waits for others to share its forward pass (0: "
                                            "it shares with those that arrived while the model was busy)."),
    workers: int = typer.Option(1, "--workers", min=1, metavar="N",
                                help="Server processes, each with the models loaded and "
                                     "its share of the cores."),
    token_file: Path | None = typer.Option(None, "--token-file", metavar="FILE",
                                           help="A file holding the token clients must send "
                                                "as 'Authorization: Bearer TOKEN'."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve beyond this machine without a token."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", min=0.001, metavar="MB",
                                      help="Largest request body (MB)."),
    max_image_pixels: int = typer.Option(DEFAULT_MAX_IMAGE_PIXELS, "--max-image-pixels", min=1, metavar="N",
                                         help="Refuse uploaded images of more pixels than this (read from their "
                                              "header before decoding)."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, gpu or auto."),
    tta: list[str] = TTA_OPTION,
    no_tta: bool = NO_TTA_OPTION,
    code: list[Path] = CODE_OPTION,
) -> None:
    """Serve trained models over the Open Inference Protocol (KServe v2) and a /predict route for people.

    The protocol as Triton speaks it; the server runs until Ctrl-C or SIGTERM (both let the requests in flight
    finish; exit 0)."""
    from ..errors import ConfigError  # noqa: PLC0415

    token = _token(token_file, no_auth, host)
    settings = {"models": [str(m) for m in models], "device": device, "views": chosen_views(tta, no_tta),
                "code": [str(c) for c in code], "max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms,
                "max_body_bytes": int(max_body_mb * (1 << 20)), "max_image_pixels": max_image_pixels, "token": token}
    try:
        import uvicorn  # noqa: PLC0415
    except ImportError:
        raise ConfigError("dltrain serve needs FastAPI and uvicorn: pip install 'dltrain[serve]'") from None
    app = app_from_settings(settings)  # loads every model: a bad one stops here, before the port is taken
    _finish_quietly_on(signal.SIGINT, signal.SIGTERM)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    else:
        os.environ[SETTINGS_VARIABLE] = json.dumps(settings)
        os.environ.setdefault("DLTRAIN_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        uvicorn.run("dltrain.cli.serve:app_from_environment", factory=True, host=host, port=port, workers=workers,
                    log_level="info", timeout_graceful_shutdown=30)
    print("dltrain serve: stopped", file=sys.stderr)


def _token(token_file: Path | None, no_auth: bool, host: str) -> str | None:
    from ..errors import ConfigError  # noqa: PLC0415

    if token_file is not None and no_auth:
        raise ConfigError("--token-file and --no-auth: give one of them")
    if token_file is None:
        if not (no_auth or _loopback(host)):
            raise ConfigError(f"--host {host} serves every machine that can reach this one: give --token-file FILE "
                              "(clients then send 'Authorization: Bearer TOKEN') or --no-auth to serve without a "
                              "token")
        return None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {token_file}: cannot read it ({getattr(exc, 'strerror', None) or exc})") \
            from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {token_file}: expected one token (no spaces) in the file, found "
                          f"{'nothing' if not token else 'spaces inside it'}")
    return token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finish_quietly_on(*signals) -> None:
    """uvicorn drains on SIGINT and SIGTERM, then raises the signal again for the handler it found: this one lets
    the command end normally (exit 0) instead of as interrupted."""
    for number in signals:
        signal.signal(number, lambda *_: None)


def app_from_settings(settings: dict):
    from .. import backend  # noqa: PLC0415
    from ..inference.loading import load_predictor  # noqa: PLC0415
    from ..inference.serve import ServedModel, Settings, create_app, model_names  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415

    load_code([Path(c) for c in settings["code"]])
    paths = [Path(m) for m in settings["models"]]
    served = []
    for path, name in zip(paths, model_names(paths)):
        device = "cpu" if path.suffix == ".onnx" else backend.resolve_device(settings["device"])
        served.append(ServedModel(name, load_predictor(path, device, settings["views"])))
    options = {key: settings[key] for key in ("max_batch_size", "max_delay_ms", "max_body_bytes", "max_image_pixels",
                                              "token")}
    return create_app(served, Settings(**options))


def app_from_environment():
    """The app of one worker process (uvicorn --workers imports it by name)."""
    return app_from_settings(json.loads(os.environ[SETTINGS_VARIABLE]))


def register(app: typer.Typer, reports_errors) -> None:
    app.command("serve")(reports_errors(serve))
