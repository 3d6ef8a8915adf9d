"""The Gradio app: a "Video" tab (upload or record, run the pipeline, get the animation, the grid
video, pose curves, the pose CSV and optionally two mappings side by side) and a "Live" tab
(webcam frames streamed through the per-frame :class:`reenact.reenactor.Reenactor`).

UI only: every computation is in :mod:`reenact.demo.backend`, and every control comes from the
typed inference config (:data:`reenact.demo.backend.CONTROLS`), so a new choice there (e.g. a new
mapping) appears here without a change.
"""
from __future__ import annotations

from typing import Any

from reenact.demo.backend import (CONTROLS, LIVE_CONTROLS, NO_COMPARISON, ControlSpec, DemoBackend,
                                  UserError)

__all__ = ["build_app", "launch", "STREAM_EVERY_S", "LIVE_TIME_LIMIT_S", "DELETE_CACHE"]

STREAM_EVERY_S = 0.1          # how often the browser sends a webcam frame (the server drops what it cannot keep up with)
LIVE_TIME_LIMIT_S = 600       # one live stream runs at most this long; press Record again to continue
DELETE_CACHE = (600, 3600)    # Gradio prunes its upload/output cache every 10 min, files older than 1 h
IMAGE_HEIGHT = 300
DISPLAY_MIN = 256             # live frames smaller than this are enlarged for display
CONTROL_ROWS = (("generator", "mapping", "angle_mode"), ("mouth_gain", "relative"),
                ("smoothing.method", "smoothing.ema_alpha"), ("smoothing.min_cutoff", "smoothing.beta"),
                ("fps", "max_frames"))
CPU_NOTE = ("On CPU each frame takes about a second with 256² generators (face crop, DECA, generator), "
            "so live mode shows one or two frames per second; webcam rate needs a CUDA GPU.")


def _component(spec: ControlSpec, tab: str):
    """The Gradio input for one config key (element id ``<tab>-<key>``, e.g. ``video-max-frames``)."""
    import gradio as gr

    common = {"label": spec.label, "value": spec.default, "info": spec.info,
              "elem_id": f"{tab}-" + spec.key.replace(".", "-").replace("_", "-")}
    if spec.kind == "dropdown":
        return gr.Dropdown(choices=list(spec.choices), **common)
    if spec.kind == "radio":
        return gr.Radio(choices=list(spec.choices), **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(**common)
    if spec.kind == "slider":
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(minimum=spec.minimum, maximum=spec.maximum, precision=spec.precision, **common)
    raise ValueError(f"unknown control kind {spec.kind!r} for {spec.key}")


def _control_rows(specs, tab: str) -> dict:
    """Controls laid out in :data:`CONTROL_ROWS` order; returns ``{config key: component}``."""
    import gradio as gr

    wanted = {spec.key: spec for spec in specs}
    out = {}
    for row in CONTROL_ROWS:
        present = [wanted.pop(key) for key in row if key in wanted]
        if present:
            with gr.Row():
                out.update({spec.key: _component(spec, tab) for spec in present})
    if wanted:  # a control not placed in a row yet
        with gr.Row():
            out.update({spec.key: _component(spec, tab) for spec in wanted.values()})
    return out


def _for_display(image):
    """Small generator outputs (fast stand-ins) enlarged, pixels kept sharp, to at least 256²."""
    import cv2

    if image.shape[0] >= DISPLAY_MIN:
        return image
    factor = -(-DISPLAY_MIN // image.shape[0])
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def _parameter(key: str) -> str:
    """Config key → API parameter name (``smoothing.method`` → ``smoothing__method``)."""
    return key.replace(".", "__")


def _by_parameter(controls: dict) -> dict:
    return {_parameter(key): component for key, component in controls.items()}


def _config_values(options: dict) -> dict:
    """API parameters back to config keys."""
    return {key.replace("__", "."): value for key, value in options.items()}


def _as_gradio_error(exc: UserError):
    import gradio as gr

    return gr.Error(str(exc), duration=None, print_exception=False)


def build_app(backend: DemoBackend):
    """The ``gr.Blocks`` app around ``backend`` (not launched)."""
    import gradio as gr

    with gr.Blocks(title="EDTN reenactment demo", delete_cache=DELETE_CACHE) as app:
        gr.Markdown("# Cross-domain head reenactment: a face video drives an anime character")
        if backend.standin_warning:
            gr.Markdown(f"**Warning: {backend.standin_warning}** (stand-in assets: "
                        f"{', '.join(backend.standin_files)})", elem_id="standin-warning")

        # ------------------------------------------------------------------ Video tab
        with gr.Tab("Video", id="video"):
            with gr.Row():
                with gr.Column(scale=1):
                    with gr.Row():
                        driving = gr.Video(sources=["upload", "webcam"], label="Driving video (upload or record)",
                                           height=IMAGE_HEIGHT, elem_id="driving")
                        source = gr.Image(type="filepath", sources=["upload"], label="Anime source image",
                                          height=IMAGE_HEIGHT, elem_id="source")
                    with gr.Accordion("Options", open=True):
                        controls = _control_rows(CONTROLS, "video")
                        compare = gr.Dropdown(choices=[NO_COMPARISON, *backend.mappings], value=NO_COMPARISON,
                                              label="Side by side with a second mapping", elem_id="video-compare",
                                              info="the same input through both mappings (twice the time)")
                    run = gr.Button("Run", variant="primary", elem_id="run")
                with gr.Column(scale=1):
                    status = gr.Markdown("Upload a driving video and an anime image, then press Run.",
                                         elem_id="status")
                    with gr.Row():
                        anime = gr.Video(label="Animation (MP4)", elem_id="anime", height=IMAGE_HEIGHT)
                        grid = gr.Video(label="Grid: driving | anime | morphs", elem_id="grid",
                                        height=IMAGE_HEIGHT)
                    plot = gr.Image(type="filepath", label="Pose curves", elem_id="pose-plot")
                    with gr.Row():
                        csv = gr.File(label="Poses (CSV)", elem_id="pose-csv")
                        side_by_side = gr.Video(label="Two mappings side by side", elem_id="side-by-side",
                                                height=IMAGE_HEIGHT)

            def run_video(driving_video, source_image, compare_with, progress=gr.Progress(), **options):
                try:
                    result = backend.run_video(driving_video, source_image, _config_values(options),
                                               compare_with, lambda fraction, desc: progress(fraction, desc=desc))
                except UserError as exc:
                    raise _as_gradio_error(exc) from None
                return (str(result.anime), str(result.grid),
                        str(result.side_by_side) if result.side_by_side else None, str(result.plot),
                        str(result.csv), result.summary)

            driving.upload(backend.playable_upload, [driving], [driving], api_visibility="private",
                           show_progress="minimal")
            run.click(run_video, [driving, source, compare], [anime, grid, side_by_side, plot, csv, status],
                      inputs_kwargs=_by_parameter(controls), api_name="run_video", concurrency_limit=1)

        # ------------------------------------------------------------------ Live tab
        with gr.Tab("Live", id="live"):
            gr.Markdown("Allow the webcam, then press **Record**: each frame goes through face crop → "
                        "DECA → mapping → pose smoothing → generator, and the anime frame comes back. "
                        f"*{CPU_NOTE}*")
            with gr.Row():
                live_source = gr.Image(type="filepath", sources=["upload"], label="Anime source image",
                                       height=IMAGE_HEIGHT, elem_id="live-source")
                camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                                  height=IMAGE_HEIGHT, elem_id="camera")
                live_out = gr.Image(label="Anime", height=IMAGE_HEIGHT, elem_id="live-anime")
            live_stats = gr.Markdown(f"achieved: - frames/s ({backend.device_note})", elem_id="live-stats")
            reset = gr.Button("Reset (next frame is the neutral face)")
            live_controls = _control_rows(LIVE_CONTROLS, "live")
            session = gr.State(None)

            def live_step(frame, source_image, state, **options):
                try:
                    state = backend.live_session(state, source_image, _config_values(options))
                    image, stats = state.step(frame)
                except UserError as exc:
                    return gr.skip(), f"**{exc}**", state
                return (gr.skip() if image is None else _for_display(image)), stats, state

            camera.stream(live_step, [camera, live_source, session], [live_out, live_stats, session],
                          inputs_kwargs=_by_parameter(live_controls), stream_every=STREAM_EVERY_S,
                          time_limit=LIVE_TIME_LIMIT_S, concurrency_limit=None, api_name="live_step",
                          show_progress="hidden")
            reset.click(backend.reset_live, [session], [session], api_name="live_reset")

        gr.api(backend.stats, api_name="stats")
    return app


def launch(app: Any, host: str, port: int, share: bool, max_upload_mb: float, allowed: list[str]):
    """Start the server without blocking; returns what ``Blocks.launch`` returns."""
    return app.queue().launch(server_name=host, server_port=port, share=share,
                              max_file_size=int(max_upload_mb * 2**20), allowed_paths=allowed,
                              prevent_thread_lock=True, show_error=True, quiet=False)
