"""emcot: embodied multimodal chain-of-thought robot policies.

A Mixture-of-Transformers Vision-Language-Action model that, at each control step, reasons in
text, imagines a visual subgoal and acts. Heavy modules load on first use, so
``import emcot.tokenizers`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "EmCoTConfig": "emcot.config",
    "EmCoTModel": "emcot.model.modeling",
    "EmCoTPolicy": "emcot.policy.policy",
    "Trace": "emcot.inference.trace",
    "Observation": "emcot.types",
    "PolicySession": "emcot.runtime.session",
    "EmCoTSample": "emcot.types",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emcot' has no attribute '{name}'")
