"""Foundation shared by every other package: settings, errors, schema, hub, caches, timings, GPUs."""
