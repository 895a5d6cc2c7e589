"""What every layer may use: process groups and devices, exit codes, config-field declarations,
command-line errors and the step-phase timer. Imports nothing else from partialfc."""
