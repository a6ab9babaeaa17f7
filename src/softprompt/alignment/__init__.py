"""Aligning two models' input-embedding spaces, one concept per module, each depending only
on those above it:

- vocabulary: token word conventions (GPT-2 'Ġ', SentencePiece '▁', WordPiece '##') and the
  vocabulary two tokenizers share;
- fit: the `Alignment` between two input-embedding spaces, fitted (ridge or Procrustes) on the
  shared tokens and scored by held-out retrieval;
- cache: fitted alignments kept on disk, keyed by model fingerprints and settings.

Methods use it to initialise a prompt from another model's; crossmodel uses it to transfer.
"""
