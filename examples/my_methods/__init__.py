"""Methods of a project of yours, outside fer_jax (docs/extending.md)."""
