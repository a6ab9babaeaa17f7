"""Steering methods, each registered with its config section, trainable module and artifact."""
