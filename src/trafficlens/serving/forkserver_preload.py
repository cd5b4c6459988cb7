"""Imported by `serve`'s fork server only (`serving.workers`), never by library code: importing it
loads the compiled prep kernels from numba's disk cache (a CPU-second), once, in the one process
that every classifier worker is forked from, so that workers, replacements of killed ones
included, inherit them instead of each loading them. No threads are started."""

from trafficlens.prep.engines.compiled import warm_up

warm_up()
