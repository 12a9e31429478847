"""Plumbing every job shares: typed configs as flags (`options`), logging (`logs`), joining Ray (`ray_cluster`),
devices, local/S3 URIs (`uri`), where the code comes from (`origin`), cluster pre-flight checks, batching by
shape. Nothing here knows the model or a stage; every other package may import it."""
