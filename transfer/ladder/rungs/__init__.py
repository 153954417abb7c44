"""The ladder's rungs, one file each (``transfer.ladder.rung`` says what a rung declares); every module here
is imported by the registry, so a new rung is a new file."""
