"""One control step of a policy: its state, the stages prefill / reason / imagine / act, guidance,
frame prediction and the finite-output check."""
