"""Learning-to-teach pipeline: data, noise, models, the shared teaching core, methods."""
