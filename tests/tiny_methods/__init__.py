"""The tests' own methods, named by module path as a user's are (docs/extending.md)."""
