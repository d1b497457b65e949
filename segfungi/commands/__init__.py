"""One module per CLI sub-command; `segfungi.cli` discovers them all."""
