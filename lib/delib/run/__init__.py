"""Running a recipe: the params schema, paths, files, the runner, the manifest, the notebooks' parameters."""
