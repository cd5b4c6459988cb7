"""Real labelled traffic on demand: real clients and servers in network namespaces, captured.

See `run.generate` for the Python API and `cli.generate` for the command.
"""

from trafficlens.generate.run import GenerateConfig, generate

__all__ = ["GenerateConfig", "generate"]
