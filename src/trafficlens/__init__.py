"""trafficlens: which application made this traffic?

Kept import-light on purpose: `import trafficlens` and `trafficlens --help` must stay fast, so
heavy modules (NumPy, PyArrow, PyTorch) are imported where they are used.
"""

__version__ = "0.1.0"
