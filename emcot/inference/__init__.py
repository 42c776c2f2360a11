"""One control step of a policy (DESIGN §5).

``options`` (GenerationOptions), ``state`` (TraceState, what the stages read and extend),
``stages`` (prefill / reason / imagine / act and their composition, ``stream_trace``),
``guidance`` (the unconditional branches and the velocity function), ``frames`` (frame
prediction: prefill + imagine), ``trace`` (Trace, TraceEvent) and ``finite`` (the finite-output check).
"""
