"""The network: `EmCoTModel` (embedding, losses, text forward/generate), the MoT backbone,
attention backends, flow matching, token sampling and the safe loader."""
