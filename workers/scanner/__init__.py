"""Case scanner: folder completeness and validation (pure) and the scan that reports cases."""
