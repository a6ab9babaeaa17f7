"""Frozen models behind one facade (Backbone) and their loading: bundled alias, folder,
.gguf file or hub id; tiny families for tests."""
