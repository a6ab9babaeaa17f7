"""Cross-model work: shared vocabularies, maps between embedding spaces, prompt transfer
and the transfer matrix."""
