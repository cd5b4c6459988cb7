"""Serving: classify new traffic with a trained model bundle.

    from trafficlens.serving import Classifier
    table = Classifier.load("runs/cnn").predict_pcap("capture.pcap")
"""

from trafficlens.inference.classifier import Classifier

__all__ = ["Classifier"]
