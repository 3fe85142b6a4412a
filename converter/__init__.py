"""edgefleet converter."""
