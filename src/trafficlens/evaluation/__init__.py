"""Evaluation: classical baselines beside the deep models, on the same splits.

    from trafficlens.evaluation.baselines import create_baseline, train_baseline
    from trafficlens.evaluation.features import baseline_features

Nothing is imported here, so `import trafficlens.evaluation` stays free of scikit-learn.
"""
