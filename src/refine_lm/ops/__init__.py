"""Pure tensor math: no parameters, no modules."""
