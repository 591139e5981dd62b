"""Deciding before anything loads: memory estimates, placement over a machine snapshot (pure functions), and
one resolved plan per stage."""
