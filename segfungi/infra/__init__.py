"""The infrastructure every layer stands on: errors, files written atomically, seeds, progress,
registries, weights ids, lazy imports, logging, torch.distributed helpers."""
