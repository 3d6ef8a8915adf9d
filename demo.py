"""Web demo (Gradio): animate an anime character from an uploaded video or live from the webcam.

    python demo.py                       # http://127.0.0.1:7860 (this machine only)
    python demo.py --port 8080 --host 0.0.0.0 --share    # other machines / a public Gradio link

Same as ``python -m reenact.demo``; see ``python demo.py --help`` and README *Demo*.
"""
import sys

from reenact.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
