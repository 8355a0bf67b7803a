"""Live validation: run the edge and the verifier service over a shaped path and measure the simulator's error."""
