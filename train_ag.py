"""Entry point for anime generator training (not implemented yet; see issue 5)."""
import sys

if __name__ == "__main__":
    sys.exit("train_ag.py: anime generator training is not implemented yet (tracked in issue 5).")
