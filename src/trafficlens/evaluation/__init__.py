"""Evaluation: classical baselines beside the deep models, on the same splits.

    from trafficlens.models.baselines.estimators import create_baseline
    from trafficlens.training.baselines import train_baseline
    from trafficlens.models.baselines.features import baseline_features

Nothing is imported here, so `import trafficlens.evaluation` stays free of scikit-learn.
"""
