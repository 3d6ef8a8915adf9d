"""Command line of the web demo: start the server, print where it listens, clean up on exit.

    python demo.py [--host 127.0.0.1] [--port 7860] [--share] [--max-upload-mb 200] [--device auto]
                   [--set key=value ...]

The server binds to 127.0.0.1 (this machine only) unless ``--host`` says otherwise; ``--share``
(off by default) asks Gradio for a public link. ``--set`` fixes an ``infer.yaml`` value for every
run (e.g. ``--set edtn_path=/models/EDTN.pt``). Temporary files (uploads, outputs) live in one
folder that is removed when the server stops (Ctrl-C). A missing asset is reported once at start
and again, readably, in the UI.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional

from infra.runtime import exit_on_user_error

__all__ = ["main", "parse_args", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_UPLOAD_MB"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 200.0
PROGRAM = "demo.py"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio link (off by default)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default 200)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an infer.yaml value for every run, e.g. edtn_path=/models/EDTN.pt (repeatable)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        parser.error(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = value
    args.overrides = overrides
    return args


def serve(args: argparse.Namespace) -> None:
    """Build the backend and the app, serve until Ctrl-C / SIGTERM, then remove the temp files."""
    from reenact.demo.workdir import WorkDir

    with WorkDir() as workdir:
        # Gradio reads its cache folder from the environment when it is imported
        os.environ["GRADIO_TEMP_DIR"] = str(workdir.gradio_cache)
        from reenact.demo.app import build_app, launch
        from reenact.demo.backend import DemoBackend

        backend = DemoBackend(workdir, args.device, args.max_upload_mb, args.overrides)
        backend.check_overrides()  # a bad --set value stops here, with the key named
        if backend.standin_warning:
            print(f"warning: {backend.standin_warning} ({', '.join(backend.standin_files)})", flush=True)
        app = build_app(backend)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        launch(app, args.host, args.port, args.share, args.max_upload_mb, [str(workdir.runs)])
        print(f"demo: serving on http://{args.host}:{args.port} (device {backend.device}; "
              f"temporary files in {workdir.root}, removed on exit); Ctrl-C to stop", flush=True)
        try:
            stop.wait()
        finally:
            app.close()
            print("demo: stopped; temporary files removed", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    exit_on_user_error(PROGRAM, serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
