"""Recipe loading, overrides and typed validation (no heavy imports)."""

from pisces_cli.config.recipe import Recipe, ResolvedRecipe, load_recipe, resolve_data
from pisces_cli.config.schema import RecipeError

__all__ = ["Recipe", "RecipeError", "ResolvedRecipe", "load_recipe", "resolve_data"]
