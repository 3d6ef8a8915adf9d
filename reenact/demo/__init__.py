"""The web demo (Gradio): ``python demo.py`` or ``python -m reenact.demo``.

:mod:`reenact.demo.backend` computes (the inference pipeline for uploaded videos, the per-frame
:class:`~reenact.reenactor.Reenactor` for the webcam), :mod:`reenact.demo.app` is the UI,
:mod:`reenact.demo.workdir` owns the temporary files and :mod:`reenact.demo.cli` starts the server.
"""
