"""What scenario flows share (a scenario never imports another scenario)."""
