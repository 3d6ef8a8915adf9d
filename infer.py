"""Entry point for inference (not implemented yet; see issue 6)."""
import sys

if __name__ == "__main__":
    sys.exit("infer.py: inference is not implemented yet (tracked in issue 6).")
