"""Weight loaders: read checkpoint files (safely) and map them onto the modules in models/."""
