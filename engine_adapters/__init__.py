"""Engine adapters: the one small interface between the gateway and what runs the model."""
