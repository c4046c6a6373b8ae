"""rectifiers_jax: He et al. 2015, Delving Deep into Rectifiers, in JAX/Flax."""
