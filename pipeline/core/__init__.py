"""The shared teaching core: the student and the pieces every teaching method is built from."""
