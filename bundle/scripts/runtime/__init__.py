"""Runtime: errors, start-up checks, the command line, checkpoints, shipped weights, run folders, handlers."""
