"""GPU discovery: nvidia-smi command lines and parsers (pure) and their sync into the DB."""
