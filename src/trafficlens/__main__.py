"""`python -m trafficlens` (what `torchrun -m trafficlens` runs on every rank)."""

from trafficlens.cli import main

# Guarded: worker processes started with "spawn" (Dask's LocalCluster) import this module again.
if __name__ == "__main__":
    main()
