"""Models: one registry, one factory. Model families are imported on first use of the registry.

    from trafficlens.models import create_model, list_models
"""

from trafficlens.models.registry import count_parameters, create_model, list_models, model_info, register_model

__all__ = ["count_parameters", "create_model", "list_models", "model_info", "register_model"]
