"""pper: Possibility and Pass-rate Prioritized Experience Replay (BTP) for code LLMs."""

__version__ = "0.1.0"
