"""emcot.tokenizers: modality codecs (text, understanding images, subgoal latents, actions/state)."""

if __name__ == "tokenizers":
    # Python was started in the repository root, so this folder was found as the top-level
    # package `tokenizers` and shadows Hugging Face's. Hand the name back to the real package.
    import importlib as _importlib
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _saved_path = list(_sys.path)
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root]
    del _sys.modules["tokenizers"]
    try:
        _sys.modules["tokenizers"] = _importlib.import_module("tokenizers")
    finally:
        _sys.path[:] = _saved_path
