"""The `kidneytumorseg` command line: thin adapters over the engine."""
