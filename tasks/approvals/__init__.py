"""Four eyes: the approval rules (``rules``) and the gate that pauses a run for them (``gate``)."""
