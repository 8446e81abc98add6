"""The analyzer (seed 000 §3.3): its contract (``schema``) and its backends (``analyzer``)."""
