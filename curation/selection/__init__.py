"""Selection sweeps: trials, their store, launchers and the engine that runs them."""
