"""pipeline: resumable multi-seed training + evaluation campaigns on Ray (the control plane)."""

__version__ = "0.1.0"
