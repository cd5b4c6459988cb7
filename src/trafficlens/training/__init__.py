"""Training: one trainer for every registered model, run directories as model bundles.

    from trafficlens.training import TrainConfig, train_run, load_bundle
"""

from trafficlens.training.bundle import Bundle, load_bundle, save_bundle
from trafficlens.training.config import TrainConfig
from trafficlens.training.run import train_run

__all__ = ["Bundle", "TrainConfig", "load_bundle", "save_bundle", "train_run"]
