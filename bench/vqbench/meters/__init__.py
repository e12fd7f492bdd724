"""Energy meters behind one interface (see ``vqbench.meters.base``)."""
