"""Entry point for EDTN training (not implemented yet; see issue 4)."""
import sys

if __name__ == "__main__":
    sys.exit("train.py: EDTN training is not implemented yet (tracked in issue 4).")
