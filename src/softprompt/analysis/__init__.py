"""What a soft prompt learned: similarity, nearest tokens, importance, the token splitting
analysis (owner, location, alignment), compression, projection and the report."""
